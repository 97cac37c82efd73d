#!/bin/sh
# The recipe's own test; see recipe.c.
exec "${BUILD:-build}/t/recipe"
