"""Build-time helpers of ./build.sh, the tests and the bench (stdlib only):
Debian roots to run commands in, and the glibc floor check of the bundle."""
