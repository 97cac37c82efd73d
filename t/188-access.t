#!/bin/sh
exec "${BUILD:-build}/t/188-access"
