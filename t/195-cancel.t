#!/bin/sh
exec "${BUILD:-build}/t/195-cancel"
