#!/bin/sh
exec "${BUILD:-build}/t/302-e2e-lifecycle"
