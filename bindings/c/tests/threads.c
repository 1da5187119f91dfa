#define _POSIX_C_SOURCE 200809L
/* threads: many threads with requests in flight at once. WORKERS threads each submit tasks
 * and get them, call one shared actor, and get refs that the main thread made, while
 * another thread waits in a long get: none of them may wait for it. Meanwhile the main
 * thread submits tasks whose argument refs it releases at once (the release, told with
 * whatever another thread sends next, must not overtake the task that names them). Also:
 * zero-copy views of a large object (two views of it are the same bytes, in the store's
 * shared mapping).
 * Runs embedded (`threads LIB`) and attached to a node runtime (`rayhpc launch -- threads
 * LIB`), LIB being testlib.c's shared library, whose functions and class the runtime loads
 * by name. Exits non-zero when an expectation does not hold. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <rayhpc.h>

#define WORKERS 4
#define ROUNDS 200
#define HANDED 50
#define RELEASED 200

static char square_fn[4096], nap_fn[4096], tally_cls[4096];
static int64_t nap_ms = 3000;
static rayhpc_actor tally;
static rayhpc_ref handed[WORKERS][HANDED];
static atomic_int long_get_done, failures;

#define EXPECT(cond, ...)                                                                   \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                  \
      fprintf(stderr, __VA_ARGS__);                                                         \
      fprintf(stderr, " (last error: %s)\n", rayhpc_last_error());                          \
      atomic_fetch_add(&failures, 1);                                                       \
    }                                                                                       \
  } while (0)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static rayhpc_arg int_arg(const int64_t *v) {
  rayhpc_arg a = {RAYHPC_ARG_BYTES, {(const uint8_t *)v, sizeof *v}, 0};
  return a;
}

/* Gets an 8-byte result and releases its ref. */
static int64_t take(rayhpc_ref r, rayhpc_status *s) {
  int64_t v = -1;
  size_t len = 0;
  *s = rayhpc_get_into(r, -1, &v, sizeof v, &len);
  rayhpc_ref_release(r);
  return v;
}

static void *long_get(void *arg) {
  rayhpc_status s;
  int64_t v = take(*(rayhpc_ref *)arg, &s);
  EXPECT(s == RAYHPC_OK && v == nap_ms, "the long get: %s, %lld", rayhpc_status_name(s), (long long)v);
  atomic_store(&long_get_done, 1);
  return NULL;
}

static void *worker(void *arg) {
  int w = (int)(intptr_t)arg;
  rayhpc_status s;
  /* Refs the main thread made (and may still be sending) are good on this thread. */
  for (int64_t k = 0; k < HANDED; k++) {
    int64_t want = (w * HANDED + k) * (w * HANDED + k);
    int64_t v = take(handed[w][k], &s);
    EXPECT(s == RAYHPC_OK && v == want, "worker %d, handed ref %lld: %s, %lld", w, (long long)k, rayhpc_status_name(s), (long long)v);
  }
  for (int64_t i = 0; i < ROUNDS; i++) {
    rayhpc_arg a = int_arg(&i);
    rayhpc_ref r;
    s = rayhpc_submit(square_fn, &a, 1, NULL, &r);
    EXPECT(s == RAYHPC_OK, "worker %d: submit: %s", w, rayhpc_status_name(s));
    if (s != RAYHPC_OK) return NULL;
    int64_t v = take(r, &s); /* this thread's submit, then its get: it sees it */
    EXPECT(s == RAYHPC_OK && v == i * i, "worker %d, square(%lld): %s, %lld", w, (long long)i, rayhpc_status_name(s), (long long)v);
    if (i % 10 == 0) {
      int64_t one = 1;
      rayhpc_arg b = int_arg(&one);
      s = rayhpc_actor_call(tally, "add", &b, 1, &r);
      EXPECT(s == RAYHPC_OK, "worker %d: actor call: %s", w, rayhpc_status_name(s));
      if (s == RAYHPC_OK) {
        v = take(r, &s);
        EXPECT(s == RAYHPC_OK && v >= 1, "worker %d: tally add: %s, %lld", w, rayhpc_status_name(s), (long long)v);
      }
    }
  }
  return NULL;
}

/* The name of the mapping of this process that holds address p ("" if none). */
static void mapping_of(const void *p, char *name, size_t cap) {
  name[0] = 0;
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return;
  char line[4096];
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    int at = 0;
    if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &at) < 2) continue;
    if ((uintptr_t)p >= lo && (uintptr_t)p < hi) {
      snprintf(name, cap, "%s", line + at);
      name[strcspn(name, "\n")] = 0;
      break;
    }
  }
  fclose(f);
}

/* Two views of a large object are the same bytes, in place in the store's shared mapping. */
static void zero_copy_views(void) {
  size_t big = 8u << 20;
  uint8_t *buf = malloc(big);
  for (size_t i = 0; i < big; i++) buf[i] = (uint8_t)(i * 7);
  rayhpc_ref r;
  rayhpc_view v1, v2;
  const uint8_t *p1 = NULL, *p2 = NULL;
  size_t l1 = 0, l2 = 0;
  EXPECT(rayhpc_put(buf, big, &r) == RAYHPC_OK, "put of 8 MiB");
  EXPECT(rayhpc_get(r, -1, &v1) == RAYHPC_OK && rayhpc_get(r, -1, &v2) == RAYHPC_OK, "two gets");
  EXPECT(rayhpc_view_data(v1, &p1, &l1) == RAYHPC_OK && rayhpc_view_data(v2, &p2, &l2) == RAYHPC_OK, "view data");
  char where[1024];
  mapping_of(p1, where, sizeof where);
  EXPECT(p1 && p1 == p2 && l1 == big && l2 == big, "two views of one object: %p (%zu) and %p (%zu)", (void *)p1, l1, (void *)p2, l2);
  EXPECT(p1 && memcmp(p1, buf, big) == 0, "the view's bytes");
  EXPECT(strstr(where, "rayhpc-arena") != NULL, "the view lies in %s, not the store's arena", where);
  printf("zero-copy views: two gets of 8 MiB give the same %zu bytes at %p, in %s\n", l1, (void *)p1, where);
  rayhpc_view_release(v1);
  rayhpc_view_release(v2);
  rayhpc_ref_release(r);
  free(buf);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s /path/to/libtestlib.so [nap ms]\n", argv[0]);
    return 2;
  }
  if (argc > 2) nap_ms = atoll(argv[2]);
  snprintf(square_fn, sizeof square_fn, "%s:square", argv[1]);
  snprintf(nap_fn, sizeof nap_fn, "%s:nap", argv[1]);
  snprintf(tally_cls, sizeof tally_cls, "%s:tally_class", argv[1]);
  const char *mode = getenv("RAYHPC_ADDRESS") ? "attached" : "embedded";
  if (rayhpc_init(NULL) != RAYHPC_OK) {
    fprintf(stderr, "init: %s\n", rayhpc_last_error());
    return 1;
  }
  zero_copy_views();
  EXPECT(rayhpc_actor_create(tally_cls, NULL, 0, NULL, &tally) == RAYHPC_OK, "create the tally");

  /* Another thread waits in a get for nap_ms. */
  rayhpc_ref long_ref;
  rayhpc_arg na = int_arg(&nap_ms);
  EXPECT(rayhpc_submit(nap_fn, &na, 1, NULL, &long_ref) == RAYHPC_OK, "submit nap");
  pthread_t waiter;
  double t0 = now();
  pthread_create(&waiter, NULL, long_get, &long_ref);
  struct timespec settle = {0, 200000000};
  nanosleep(&settle, NULL); /* its get is in flight */

  for (int64_t w = 0; w < WORKERS; w++) {
    for (int64_t k = 0; k < HANDED; k++) {
      int64_t x = w * HANDED + k;
      rayhpc_arg a = int_arg(&x);
      EXPECT(rayhpc_submit(square_fn, &a, 1, NULL, &handed[w][k]) == RAYHPC_OK, "submit a handed square");
    }
  }
  pthread_t ws[WORKERS];
  for (intptr_t w = 0; w < WORKERS; w++) pthread_create(&ws[w], NULL, worker, (void *)w);
  rayhpc_ref squares[RELEASED];
  for (int64_t i = 0; i < RELEASED; i++) {
    rayhpc_ref x;
    EXPECT(rayhpc_put(&i, sizeof i, &x) == RAYHPC_OK, "put %lld", (long long)i);
    rayhpc_arg a = {RAYHPC_ARG_REF, {NULL, 0}, x};
    EXPECT(rayhpc_submit(square_fn, &a, 1, NULL, &squares[i]) == RAYHPC_OK, "submit square of a ref");
    EXPECT(rayhpc_ref_release(x) == RAYHPC_OK, "release the argument"); /* the task holds it */
  }
  for (int w = 0; w < WORKERS; w++) pthread_join(ws[w], NULL);
  double took = now() - t0;
  int waited = atomic_load(&long_get_done);
  printf("%s: %d threads x %d submits and gets, %d handed refs each, %d actor calls, %d tasks of released refs: %.2f s, while "
         "another thread's get of a %lld ms task %s\n",
         mode, WORKERS, ROUNDS, HANDED, WORKERS * ROUNDS / 10, RELEASED, took, (long long)nap_ms,
         waited ? "had ENDED (they waited for it)" : "was still waiting");
  EXPECT(!waited, "the threads waited for another thread's get");
  pthread_join(waiter, NULL);
  for (int64_t i = 0; i < RELEASED; i++) {
    rayhpc_status s;
    int64_t v = take(squares[i], &s);
    EXPECT(s == RAYHPC_OK && v == i * i, "square of released ref %lld: %s, %lld", (long long)i, rayhpc_status_name(s), (long long)v);
  }

  rayhpc_ref r;
  rayhpc_status s = rayhpc_actor_call(tally, "get", NULL, 0, &r);
  int64_t total = s == RAYHPC_OK ? take(r, &s) : -1;
  EXPECT(s == RAYHPC_OK && total == WORKERS * ROUNDS / 10, "the tally: %s, %lld", rayhpc_status_name(s), (long long)total);
  rayhpc_actor_release(tally);
  EXPECT(rayhpc_shutdown() == RAYHPC_OK, "shutdown");
  int f = atomic_load(&failures);
  printf("%s: %s\n", mode, f ? "FAILED" : "all threads went on at once");
  return f ? 1 : 0;
}
