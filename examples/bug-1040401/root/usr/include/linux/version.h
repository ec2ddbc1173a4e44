/* libc-dev */
