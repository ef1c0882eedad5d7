/* Benchmark workload for kernel-allocator tracing: `kpairs N` makes and closes N eventfds (each
 * a kmalloc'd context, a file, a dentry and its security blob: four kernel allocations and
 * frees) and prints the ns per eventfd. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 0;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < n; i++) {
        int fd = eventfd(0, EFD_CLOEXEC);
        if (fd < 0)
            return 1;
        close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    if (n > 0)
        printf("%.1f\n", ns / n);
    return 0;
}
