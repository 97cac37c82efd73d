#!/bin/sh
exec "${BUILD:-build}/t/320-recipe"
