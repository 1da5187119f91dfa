#define _POSIX_C_SOURCE 200809L
/* bench: empty tasks submitted in a batch, then all got; prints tasks per second (the
 * median of the trials, after half a second of untimed batches), as `rayhpc bench`'s
 * tasks_async_per_s measures it, two ways:
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

/* What one batch needs: the function, and room for n refs (and n calls, n ready flags). */
struct batch {
  rayhpc_fn f;
  size_t n;
  rayhpc_ref *refs;
  rayhpc_call_spec *calls;
  uint8_t *ready;
};

/* n tasks, one call each, then each got and released. */
static int per_call(struct batch *b) {
  for (size_t i = 0; i < b->n; i++) CHECK(rayhpc_call(b->f, NULL, 0, NULL, &b->refs[i]));
  for (size_t i = 0; i < b->n; i++) {
    size_t len;
    CHECK(rayhpc_get_into(b->refs[i], -1, NULL, 0, &len));
    CHECK(rayhpc_ref_release(b->refs[i]));
  }
  return 0;
}

/* n tasks in one batch call, one wait for all, one release of all. */
static int batched(struct batch *b) {
  size_t nready;
  CHECK(rayhpc_call_batch(b->calls, b->n, b->refs));
  CHECK(rayhpc_wait(b->refs, b->n, b->n, -1, b->ready, &nready));
  CHECK(rayhpc_ref_release_batch(b->refs, b->n));
  return nready != b->n;
}

/* The median rate of `trials` timed batches, after half a second of untimed ones (the first
 * touches of fresh memory are not the runtime's rate); negative when a batch failed. */
static double rate(int (*run)(struct batch *), struct batch *b, int trials) {
  double rates[64];
  if (trials > 64) trials = 64;
  double warm = now();
  do {
    if (run(b)) return -1;
  } while (now() - warm < 0.5);
  for (int t = 0; t < trials; t++) {
    double start = now();
    if (run(b)) return -1;
    rates[t] = (double)b->n / (now() - start);
  }
  qsort(rates, (size_t)trials, sizeof rates[0], cmp);
  return rates[trials / 2];
}

int main(int argc, char **argv) {
  size_t n = argc > 1 ? (size_t)atol(argv[1]) : 200000;
  int trials = argc > 2 ? atoi(argv[2]) : 5;
  if (n == 0 || trials < 1) {
    fprintf(stderr, "usage: bench [tasks > 0] [trials > 0]\n");
    return 2;
  }
  CHECK(rayhpc_register("empty", empty, NULL, 0));
  CHECK(rayhpc_init(NULL));
  struct batch b = {0, n, malloc(n * sizeof(rayhpc_ref)), malloc(n * sizeof(rayhpc_call_spec)), malloc(n)};
  if (!b.refs || !b.calls || !b.ready) return 1;
  CHECK(rayhpc_lookup("empty", &b.f));
  for (size_t i = 0; i < n; i++) b.calls[i] = (rayhpc_call_spec){b.f, NULL, 0, NULL};
  double per = rate(per_call, &b, trials);
  double all = rate(batched, &b, trials);
  free(b.calls);
  free(b.ready);
  free(b.refs);
  CHECK(rayhpc_shutdown());
  if (per < 0 || all < 0) return 1;
  printf("c_tasks_async_per_s %.0f\n", per);
  printf("c_tasks_async_batch_per_s %.0f\n", all);
  return 0;
}
