/* Benchmark workload: `pairs N` times N malloc+free pairs and prints the ns per pair; with
 * N = 0 it is the shortest possible process (the fixed cost of tracing one). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 0;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < n; i++) {
        void *volatile p = malloc(64);
        free(p);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    if (n > 0)
        printf("%.1f\n", ns / n);
    return 0;
}
