/* Benchmark workload for the exit scan: `live N SIZE keep|lose` allocates N blocks of SIZE
 * bytes, each pointing at the one before, and exits with the newest one kept in a static
 * (every block reachable) or forgotten (one definitely lost, the rest indirectly). */
#include <stdlib.h>
#include <string.h>

static void *volatile head;

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    long n = atol(argv[1]);
    size_t size = (size_t)atol(argv[2]);
    if (size < sizeof(void *))
        return 2;
    void *last = NULL;
    for (long i = 0; i < n; i++) {
        void **block = malloc(size);
        memset(block, 0, size);
        block[0] = last;
        last = block;
    }
    head = last;
    if (strcmp(argv[3], "lose") == 0)
        head = NULL;
    return 0;
}
