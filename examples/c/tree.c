/* tree: the sum of 1..N by a tree of tasks whose arguments are the refs of other tasks
 * (each runs once both halves are done), then a zero-copy read of the result. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "check.h"

static int32_t sum2(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)user;
  int64_t total = 0;
  for (size_t i = 0; i < nargs; i++) {
    int64_t v;
    memcpy(&v, args[i].data, sizeof v);
    total += v;
  }
  return rayhpc_output_set(out, &total, sizeof total) == RAYHPC_OK ? 0 : 1;
}

int main(int argc, char **argv) {
  size_t n = argc > 1 ? (size_t)atol(argv[1]) : 1024;
  CHECK(rayhpc_register("sum2", sum2, NULL, -1));
  CHECK(rayhpc_init(NULL));
  rayhpc_ref *level = malloc(n * sizeof *level);
  for (size_t i = 0; i < n; i++) {
    int64_t v = (int64_t)i + 1;
    CHECK(rayhpc_put(&v, sizeof v, &level[i]));
  }
  size_t tasks = 0;
  while (n > 1) {
    size_t m = 0;
    for (size_t i = 0; i < n; i += 2) {
      if (i + 1 == n) { level[m++] = level[i]; break; }
      rayhpc_arg args[2] = {{RAYHPC_ARG_REF, {NULL, 0}, level[i]}, {RAYHPC_ARG_REF, {NULL, 0}, level[i + 1]}};
      rayhpc_ref r;
      CHECK(rayhpc_submit("sum2", args, 2, NULL, &r));
      CHECK(rayhpc_ref_release(level[i])); /* the task holds what it needs */
      CHECK(rayhpc_ref_release(level[i + 1]));
      level[m++] = r;
      tasks++;
    }
    n = m;
  }
  rayhpc_view v;
  CHECK(rayhpc_get(level[0], 60.0, &v));
  const uint8_t *data;
  size_t len;
  CHECK(rayhpc_view_data(v, &data, &len));
  int64_t total;
  memcpy(&total, data, sizeof total);
  size_t want = argc > 1 ? (size_t)atol(argv[1]) : 1024;
  printf("sum of 1..%zu = %lld by %zu tasks\n", want, (long long)total, tasks);
  CHECK(rayhpc_view_release(v));
  CHECK(rayhpc_ref_release(level[0]));
  free(level);
  CHECK(rayhpc_shutdown());
  return total == (int64_t)(want * (want + 1) / 2) ? 0 : 1;
}
