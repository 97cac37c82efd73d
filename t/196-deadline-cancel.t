#!/bin/sh
exec "${BUILD:-build}/t/196-deadline-cancel"
