#!/bin/sh
exec "${BUILD:-build}/t/365-reuseport"
