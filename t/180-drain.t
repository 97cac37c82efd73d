#!/bin/sh
exec "${BUILD:-build}/t/180-drain"
