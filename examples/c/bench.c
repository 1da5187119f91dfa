#define _POSIX_C_SOURCE 200809L
/* bench: empty tasks submitted in a batch, then all got; prints tasks per second (the
 * median of the trials), as `rayhpc bench`'s tasks_async_per_s measures it, two ways:
 * - c_tasks_async_per_s: one rayhpc_call per task (the function looked up once), then one
 *   rayhpc_get_into and rayhpc_ref_release per task;
 * - c_tasks_async_batch_per_s: the batch calls (rayhpc_call_batch, one rayhpc_wait for all,
 *   rayhpc_ref_release_batch), as a code submitting many tasks at once would. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include "check.h"

static int32_t empty(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user) {
  (void)args; (void)nargs; (void)out; (void)user;
  return 0;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  size_t n = argc > 1 ? (size_t)atol(argv[1]) : 200000;
  int trials = argc > 2 ? atoi(argv[2]) : 5;
  CHECK(rayhpc_register("empty", empty, NULL, 0));
  CHECK(rayhpc_init(NULL));
  rayhpc_fn f;
  CHECK(rayhpc_lookup("empty", &f));
  rayhpc_ref *refs = malloc(n * sizeof *refs);
  double rates[64];
  if (trials > 64) trials = 64;
  for (int t = 0; t < trials; t++) {
    double start = now();
    for (size_t i = 0; i < n; i++) CHECK(rayhpc_call(f, NULL, 0, NULL, &refs[i]));
    for (size_t i = 0; i < n; i++) {
      size_t len;
      CHECK(rayhpc_get_into(refs[i], -1, NULL, 0, &len));
      CHECK(rayhpc_ref_release(refs[i]));
    }
    rates[t] = (double)n / (now() - start);
  }
  qsort(rates, (size_t)trials, sizeof rates[0], cmp);
  printf("c_tasks_async_per_s %.0f\n", rates[trials / 2]);

  rayhpc_call_spec *calls = malloc(n * sizeof *calls);
  uint8_t *ready = malloc(n);
  for (size_t i = 0; i < n; i++) calls[i] = (rayhpc_call_spec){f, NULL, 0, NULL};
  for (int t = 0; t < trials; t++) {
    double start = now();
    size_t nready;
    CHECK(rayhpc_call_batch(calls, n, refs));
    CHECK(rayhpc_wait(refs, n, n, -1, ready, &nready));
    CHECK(rayhpc_ref_release_batch(refs, n));
    rates[t] = (double)n / (now() - start);
    if (nready != n) return 1;
  }
  qsort(rates, (size_t)trials, sizeof rates[0], cmp);
  printf("c_tasks_async_batch_per_s %.0f\n", rates[trials / 2]);
  free(calls);
  free(ready);
  free(refs);
  CHECK(rayhpc_shutdown());
  return 0;
}
