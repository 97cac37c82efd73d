#!/bin/sh
exec "${BUILD:-build}/t/186-isolation-reload"
