/* cluster.c: a C driver for a node runtime: run under `rayhpc launch` (on one node or many,
 * `srun rayhpc launch -- ./cluster ./libsquare.so 100`), rayhpc_init(NULL) attaches to it
 * through $RAYHPC_ADDRESS. The tasks are `library:symbol` functions the nodes load.
 * Prints the sum of the squares of 0..n-1, and checks a failing task surfaces in get. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include "check.h"

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s /path/to/libsquare.so [n]\n", argv[0]);
    return 2;
  }
  int64_t n = argc > 2 ? atoll(argv[2]) : 100;
  char name[4096];
  snprintf(name, sizeof name, "%s:square", argv[1]);
  CHECK(rayhpc_init(NULL));
  rayhpc_fn f;
  CHECK(rayhpc_lookup(name, &f));
  rayhpc_ref *refs = malloc((size_t)n * sizeof *refs);
  for (int64_t i = 0; i < n; i++) {
    rayhpc_arg a = {.kind = RAYHPC_ARG_BYTES, .bytes = {(const uint8_t *)&i, sizeof i}};
    CHECK(rayhpc_call(f, &a, 1, NULL, &refs[i]));
  }
  int64_t sum = 0;
  for (int64_t i = 0; i < n; i++) {
    int64_t v;
    size_t len;
    CHECK(rayhpc_get_into(refs[i], -1, &v, sizeof v, &len));
    sum += v;
    CHECK(rayhpc_ref_release(refs[i]));
  }
  printf("sum of squares of 0..%" PRId64 " = %" PRId64 "\n", n - 1, sum);
  /* A bad argument: the task fails, and get says so with the function's message. */
  rayhpc_arg bad = {.kind = RAYHPC_ARG_BYTES, .bytes = {(const uint8_t *)"x", 1}};
  rayhpc_ref r;
  CHECK(rayhpc_call(f, &bad, 1, NULL, &r));
  int64_t v;
  size_t len;
  int32_t s = rayhpc_get_into(r, -1, &v, sizeof v, &len);
  printf("a bad call: %s: %s\n", rayhpc_status_name(s), rayhpc_last_error());
  CHECK(rayhpc_ref_release(r));
  free(refs);
  CHECK(rayhpc_shutdown());
  return 0;
}
