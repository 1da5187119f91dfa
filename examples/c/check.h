/* A CHECK macro for the examples: on any status but RAYHPC_OK, print the call, the status
 * and rayhpc_last_error(), and return 1 from main. */
#ifndef RAYHPC_EXAMPLE_CHECK_H
#define RAYHPC_EXAMPLE_CHECK_H
#include <stdio.h>
#include <rayhpc.h>
#define CHECK(call)                                                                        \
  do {                                                                                     \
    rayhpc_status s_ = (call);                                                             \
    if (s_ != RAYHPC_OK) {                                                                 \
      fprintf(stderr, "%s: %s: %s\n", #call, rayhpc_status_name(s_), rayhpc_last_error()); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)
#endif
