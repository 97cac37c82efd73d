#!/bin/sh
exec "${BUILD:-build}/t/198-inline"
