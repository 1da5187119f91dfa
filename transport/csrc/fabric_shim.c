/*
 * The C side of rayhpc-transport's `fabric` feature: owns every libfabric object and
 * exposes a flat API of plain integers, pointers and byte buffers (many libfabric calls are
 * `static inline` in its headers, so Rust cannot call them directly). Declared by hand in
 * src/fabric/sys.rs; keep both in step.
 *
 * Conventions: functions return 0 (or a count) on success and a negative libfabric error
 * code (-FI_E..., which equals -errno for the errno range) on failure. Those taking
 * `err`/`errlen` write "call: message" there on failure. Everything is safe to call from
 * several threads at once on one rf_fabric: the domain is opened FI_THREAD_SAFE and the
 * shim's own state (the list of operations in flight) has a mutex.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#define RF_API FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION)
#define RF_MR_MODES (FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT)
#define RF_ADDR_MAX 256

/* The memory-registration modes in force, as reported by rf_mr_mode. */
#define RF_MR_LOCAL 1u
#define RF_MR_VIRT_ADDR 2u
#define RF_MR_ALLOCATED 4u
#define RF_MR_PROV_KEY 8u
#define RF_MR_ENDPOINT 16u

/* One operation in flight. The provider may use `ctx` as scratch (FI_CONTEXT/FI_CONTEXT2
 * modes); the completion hands back its address, and `token` tells Rust whose it is. */
struct rf_op {
    struct fi_context2 ctx;
    uint64_t token;
    struct rf_op *prev, *next;
};

typedef struct rf_fabric {
    struct fi_info *info; /* the list fi_getinfo returned; the first entry is used */
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_cq *cq;
    struct fid_av *av;
    struct fid_ep *ep;
    int cq_fd;               /* the CQ's wait object (FI_WAIT_FD), or -1 */
    int wake_fd;             /* an eventfd that rf_wake writes, or -1 */
    uint8_t name[RF_ADDR_MAX]; /* this endpoint's own address */
    size_t name_len;
    pthread_mutex_t lock;    /* guards `ops` */
    struct rf_op ops;        /* sentinel of the circular list of operations in flight */
} rf_fabric;

typedef struct rf_mr {
    struct fid_mr *mr;
    void *desc;
} rf_mr;

static int fail(char *err, size_t errlen, const char *call, int ret) {
    int code = ret < 0 ? -ret : ret;
    if (code == 0) code = FI_EOTHER;
    if (err && errlen) snprintf(err, errlen, "%s: %s (%d)", call, fi_strerror(code), -code);
    return -code;
}

static struct fi_info *make_hints(const char *prov) {
    struct fi_info *h = fi_allocinfo();
    if (!h) return NULL;
    h->caps = FI_RMA | FI_READ | FI_REMOTE_READ;
    /* Every operation carries 64 bytes of scratch, so providers that want it can have it. */
#ifdef FI_CONTEXT
    h->mode |= FI_CONTEXT;
#endif
#ifdef FI_CONTEXT2
    h->mode |= FI_CONTEXT2;
#endif
    h->ep_attr->type = FI_EP_RDM;
    h->domain_attr->mr_mode = RF_MR_MODES;
    h->domain_attr->threading = FI_THREAD_SAFE;
    if (prov && *prov) {
        h->fabric_attr->prov_name = strdup(prov);
        if (!h->fabric_attr->prov_name) {
            fi_freeinfo(h);
            return NULL;
        }
    }
    return h;
}

static int is_sockaddr(uint32_t fmt) {
    return fmt == FI_SOCKADDR || fmt == FI_SOCKADDR_IN || fmt == FI_SOCKADDR_IN6;
}

/* Provider names offering FI_RMA on FI_EP_RDM, each once, '\n'-separated into buf (always
 * NUL-terminated when len > 0). Returns the length the whole list needs (without the NUL),
 * 0 when there is none, or a negative error. */
long rf_providers(char *buf, size_t len, char *err, size_t errlen) {
    struct fi_info *hints = make_hints(NULL), *list = NULL, *i, *j;
    size_t need = 0;
    int ret;
    if (!hints) return fail(err, errlen, "fi_allocinfo", -FI_ENOMEM);
    ret = fi_getinfo(RF_API, NULL, NULL, 0, hints, &list);
    fi_freeinfo(hints);
    if (ret == -FI_ENODATA) ret = 0, list = NULL;
    if (ret) return fail(err, errlen, "fi_getinfo", ret);
    if (len) buf[0] = '\0';
    for (i = list; i; i = i->next) {
        const char *name = i->fabric_attr->prov_name;
        int seen = 0;
        if (!name) continue;
        for (j = list; j != i; j = j->next)
            if (j->fabric_attr->prov_name && !strcmp(j->fabric_attr->prov_name, name)) seen = 1;
        if (seen) continue;
        if (need + strlen(name) + 1 < len) {
            strcat(buf, name);
            strcat(buf, "\n");
        }
        need += strlen(name) + 1;
    }
    fi_freeinfo(list);
    return (long)need;
}

void rf_close(rf_fabric *f) {
    struct rf_op *op, *next;
    if (!f) return;
    if (f->ep) fi_close(&f->ep->fid);
    if (f->av) fi_close(&f->av->fid);
    if (f->cq) fi_close(&f->cq->fid);
    if (f->domain) fi_close(&f->domain->fid);
    if (f->fabric) fi_close(&f->fabric->fid);
    if (f->info) fi_freeinfo(f->info);
    if (f->wake_fd >= 0) close(f->wake_fd);
    /* The endpoint is gone: operations that never completed never will. */
    for (op = f->ops.next; op && op != &f->ops; op = next) {
        next = op->next;
        free(op);
    }
    pthread_mutex_destroy(&f->lock);
    free(f);
}

/* Opens fabric, domain, CQ, AV and one RDM endpoint of provider `prov` (any when NULL).
 * `node`, when not NULL, is the local address to bind to; it applies only to providers
 * addressed by IP (FI_SOCKADDR*), others ignore it. */
int rf_open(const char *prov, const char *node, rf_fabric **out, char *err, size_t errlen) {
    struct fi_info *hints, *info = NULL;
    struct fi_cq_attr cq_attr;
    struct fi_av_attr av_attr;
    rf_fabric *f;
    int ret;

    *out = NULL;
    hints = make_hints(prov);
    if (!hints) return fail(err, errlen, "fi_allocinfo", -FI_ENOMEM);
    ret = fi_getinfo(RF_API, NULL, NULL, 0, hints, &info);
    if (!ret && node && *node && is_sockaddr(info->addr_format)) {
        fi_freeinfo(info);
        info = NULL;
        ret = fi_getinfo(RF_API, node, NULL, FI_SOURCE, hints, &info);
        if (ret) {
            fi_freeinfo(hints);
            return fail(err, errlen, "fi_getinfo (with the source address)", ret);
        }
    }
    fi_freeinfo(hints);
    if (ret) return fail(err, errlen, "fi_getinfo", ret);
    if (info->domain_attr->threading != FI_THREAD_SAFE) {
        fi_freeinfo(info);
        return fail(err, errlen, "fi_getinfo (FI_THREAD_SAFE not offered)", -FI_ENODATA);
    }

    f = calloc(1, sizeof *f);
    if (!f) {
        fi_freeinfo(info);
        return fail(err, errlen, "calloc", -FI_ENOMEM);
    }
    f->info = info;
    f->ops.next = f->ops.prev = &f->ops;
    f->cq_fd = f->wake_fd = -1;
    pthread_mutex_init(&f->lock, NULL);

    ret = fi_fabric(info->fabric_attr, &f->fabric, NULL);
    if (ret) goto fail_fabric;
    ret = fi_domain(f->fabric, info, &f->domain, NULL);
    if (ret) goto fail_domain;

    /* A CQ with a file descriptor to sleep on (not FI_WAIT_UNSPEC, which may give
     * FI_WAIT_YIELD, a busy loop, as shm does); without a wait object if there is none. */
    memset(&cq_attr, 0, sizeof cq_attr);
    cq_attr.format = FI_CQ_FORMAT_CONTEXT;
    cq_attr.wait_obj = FI_WAIT_FD;
    ret = fi_cq_open(f->domain, &cq_attr, &f->cq, NULL);
    if (ret) {
        cq_attr.wait_obj = FI_WAIT_NONE;
        ret = fi_cq_open(f->domain, &cq_attr, &f->cq, NULL);
        if (ret) goto fail_cq;
    } else if (fi_control(&f->cq->fid, FI_GETWAIT, &f->cq_fd) || f->cq_fd < 0) {
        f->cq_fd = -1;
    }
    if (f->cq_fd >= 0) {
        f->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (f->wake_fd < 0) f->cq_fd = -1;
    }

    memset(&av_attr, 0, sizeof av_attr);
    av_attr.type = FI_AV_TABLE;
    ret = fi_av_open(f->domain, &av_attr, &f->av, NULL);
    if (ret) goto fail_av;

    ret = fi_endpoint(f->domain, info, &f->ep, NULL);
    if (ret) goto fail_ep;
    ret = fi_ep_bind(f->ep, &f->av->fid, 0);
    if (ret) goto fail_bind;
    ret = fi_ep_bind(f->ep, &f->cq->fid, FI_TRANSMIT | FI_RECV);
    if (ret) goto fail_bind;
    ret = fi_enable(f->ep);
    if (ret) goto fail_enable;
    f->name_len = sizeof f->name;
    ret = fi_getname(&f->ep->fid, f->name, &f->name_len);
    if (ret) goto fail_name;
    *out = f;
    return 0;

#define FAIL(label, call) \
    label:                \
    ret = fail(err, errlen, call, ret); goto done
    FAIL(fail_fabric, "fi_fabric");
    FAIL(fail_domain, "fi_domain");
    FAIL(fail_cq, "fi_cq_open");
    FAIL(fail_av, "fi_av_open");
    FAIL(fail_ep, "fi_endpoint");
    FAIL(fail_bind, "fi_ep_bind");
    FAIL(fail_enable, "fi_enable");
    FAIL(fail_name, "fi_getname");
#undef FAIL
done:
    rf_close(f);
    return ret;
}

/* The provider's name, e.g. "tcp;ofi_rxm"; valid as long as f. */
const char *rf_prov_name(const rf_fabric *f) { return f->info->fabric_attr->prov_name; }

/* The RF_MR_* modes the provider asked for. */
unsigned rf_mr_mode(const rf_fabric *f) {
    uint64_t m = (uint64_t)f->info->domain_attr->mr_mode;
    return (m & FI_MR_LOCAL ? RF_MR_LOCAL : 0) | (m & FI_MR_VIRT_ADDR ? RF_MR_VIRT_ADDR : 0) |
           (m & FI_MR_ALLOCATED ? RF_MR_ALLOCATED : 0) | (m & FI_MR_PROV_KEY ? RF_MR_PROV_KEY : 0) |
           (m & FI_MR_ENDPOINT ? RF_MR_ENDPOINT : 0);
}

/* Largest single transfer, and how many operations the transmit queue holds. */
void rf_limits(const rf_fabric *f, size_t *max_msg, size_t *tx_size) {
    *max_msg = f->info->ep_attr->max_msg_size;
    *tx_size = f->info->tx_attr->size;
}

/* 1 when rf_wait sleeps on the CQ's wait object; 0 when the CQ has none (poll it). */
int rf_can_wait(const rf_fabric *f) { return f->cq_fd >= 0; }

/* This endpoint's address into buf; *len is buf's size in, the address's length out. */
int rf_getname(rf_fabric *f, void *buf, size_t *len) { return fi_getname(&f->ep->fid, buf, len); }

/* Registers [buf, buf+len) for remote reads and as the destination of local reads.
 * `requested_key` is used unless the provider picks keys (FI_MR_PROV_KEY). */
int rf_mr_reg(rf_fabric *f, void *buf, size_t len, uint64_t requested_key, rf_mr **out, uint64_t *key, char *err,
              size_t errlen) {
    rf_mr *m;
    int ret;
    *out = NULL;
    m = calloc(1, sizeof *m);
    if (!m) return fail(err, errlen, "calloc", -FI_ENOMEM);
    ret = fi_mr_reg(f->domain, buf, len, FI_READ | FI_REMOTE_READ, 0, requested_key, 0, &m->mr, NULL);
    if (ret) {
        free(m);
        return fail(err, errlen, "fi_mr_reg", ret);
    }
    if (f->info->domain_attr->mr_mode & FI_MR_ENDPOINT) {
        ret = fi_mr_bind(m->mr, &f->ep->fid, 0);
        if (ret) {
            ret = fail(err, errlen, "fi_mr_bind", ret);
            goto close;
        }
        ret = fi_mr_enable(m->mr);
        if (ret) {
            ret = fail(err, errlen, "fi_mr_enable", ret);
            goto close;
        }
    }
    *key = fi_mr_key(m->mr);
    if (*key == FI_KEY_NOTAVAIL) {
        ret = fail(err, errlen, "fi_mr_key", -FI_ENOKEY);
        goto close;
    }
    m->desc = fi_mr_desc(m->mr);
    *out = m;
    return 0;
close:
    fi_close(&m->mr->fid);
    free(m);
    return ret;
}

void rf_mr_close(rf_mr *m) {
    if (!m) return;
    fi_close(&m->mr->fid);
    free(m);
}

/* Whether `addr` (len bytes) has the shape of an address of this provider's format. */
static int valid_addr(const rf_fabric *f, const uint8_t *addr, size_t len) {
    sa_family_t fam;
    if (len == 0 || len > RF_ADDR_MAX) return 0;
    switch (f->info->addr_format) {
    case FI_SOCKADDR:
    case FI_SOCKADDR_IN:
    case FI_SOCKADDR_IN6:
        if (len < sizeof(struct sockaddr_in)) return 0;
        memcpy(&fam, addr, sizeof fam);
        if (fam == AF_INET) return len == sizeof(struct sockaddr_in) && f->info->addr_format != FI_SOCKADDR_IN6;
        if (fam == AF_INET6) return len == sizeof(struct sockaddr_in6) && f->info->addr_format != FI_SOCKADDR_IN;
        return 0;
    case FI_ADDR_STR: {
        /* A printable string, NUL-terminated or not, of the scheme of this endpoint's own
         * ("fi_shm://..."). */
        const char *sep = memchr(f->name, ':', f->name_len);
        size_t scheme = sep ? (size_t)(sep - (const char *)f->name) : 0;
        if (len <= scheme || memcmp(addr, f->name, scheme) != 0) return 0;
        for (size_t i = 0; i < len; i++) {
            if (addr[i] == 0) return i > 0 && i + 1 == len;
            if (addr[i] < 0x20 || addr[i] > 0x7e) return 0;
        }
        return 1;
    }
    default:
        /* An opaque format of fixed size: the same as this endpoint's own. */
        return len == f->name_len;
    }
}

/* Inserts a peer's address (as its rf_getname gave it) into the AV. */
int rf_av_insert(rf_fabric *f, const void *addr, size_t len, uint64_t *out, char *err, size_t errlen) {
    uint8_t buf[RF_ADDR_MAX + 1];
    fi_addr_t a = FI_ADDR_NOTAVAIL;
    int n;
    if (!valid_addr(f, addr, len)) return fail(err, errlen, "not an address of this provider", -FI_EADDRNOTAVAIL);
    memset(buf, 0, sizeof buf);
    memcpy(buf, addr, len);
    n = fi_av_insert(f->av, buf, 1, &a, 0, NULL);
    if (n != 1 || a == FI_ADDR_NOTAVAIL) return fail(err, errlen, "fi_av_insert", n < 0 ? n : -FI_EADDRNOTAVAIL);
    *out = a;
    return 0;
}

/* Removes a peer from the AV; a provider over connections closes the peer's connection. */
int rf_av_remove(rf_fabric *f, uint64_t addr) {
    fi_addr_t a = addr;
    return fi_av_remove(f->av, &a, 1, 0);
}

static void unlink_op(rf_fabric *f, struct rf_op *op) {
    pthread_mutex_lock(&f->lock);
    op->prev->next = op->next;
    op->next->prev = op->prev;
    pthread_mutex_unlock(&f->lock);
}

/* Posts one read of len bytes from the peer's (raddr, key) into local, which lies in mr.
 * Returns 0 when posted (its completion will carry `token`), 1 when the provider cannot
 * take it now (-FI_EAGAIN: poll, then try again), a negative error otherwise. */
int rf_read(rf_fabric *f, void *local, size_t len, const rf_mr *mr, uint64_t peer, uint64_t raddr, uint64_t key,
            uint64_t token) {
    struct rf_op *op = calloc(1, sizeof *op);
    ssize_t ret;
    if (!op) return -FI_ENOMEM;
    op->token = token;
    pthread_mutex_lock(&f->lock);
    op->next = f->ops.next;
    op->prev = &f->ops;
    f->ops.next->prev = op;
    f->ops.next = op;
    pthread_mutex_unlock(&f->lock);
    ret = fi_read(f->ep, local, len, mr->desc, (fi_addr_t)peer, raddr, key, op);
    if (ret) {
        unlink_op(f, op);
        free(op);
    }
    return ret == -FI_EAGAIN ? 1 : (int)ret;
}

static uint64_t finish_op(rf_fabric *f, void *ctx) {
    struct rf_op *op = ctx;
    uint64_t token;
    if (!op) return 0;
    token = op->token;
    unlink_op(f, op);
    free(op);
    return token;
}

/* Reads up to max completions (at most 32) without blocking: tokens[i] is the token of
 * each, errs[i] 0 or the positive error code of a failed one, whose text is then in msg
 * (at most one failed completion per call, always the last). A token of 0 is an error not
 * tied to an operation. Returns the number of entries, 0 when there was none, or a
 * negative error of the CQ itself. Drives the provider's progress (for this side's
 * operations and for peers' operations on this side's memory). */
int rf_poll(rf_fabric *f, uint64_t *tokens, int *errs, size_t max, char *msg, size_t msglen) {
    struct fi_cq_entry ent[32];
    struct fi_cq_err_entry e;
    ssize_t n;
    if (max > 32) max = 32;
    if (max == 0) return 0;
    n = fi_cq_read(f->cq, ent, max);
    if (n > 0) {
        for (ssize_t i = 0; i < n; i++) {
            tokens[i] = finish_op(f, ent[i].op_context);
            errs[i] = 0;
        }
        return (int)n;
    }
    if (n == -FI_EAGAIN || n == -FI_ETIMEDOUT || n == -FI_ECANCELED || n == -FI_EINTR || n == 0) return 0;
    if (n != -FI_EAVAIL) return fail(msg, msglen, "fi_cq_read", (int)n);
    memset(&e, 0, sizeof e);
    n = fi_cq_readerr(f->cq, &e, 0);
    if (n == -FI_EAGAIN) return 0; /* another thread took it */
    if (n < 0) return fail(msg, msglen, "fi_cq_readerr", (int)n);
    tokens[0] = finish_op(f, e.op_context);
    errs[0] = e.err ? e.err : FI_EOTHER;
    if (msg && msglen) {
        const char *detail = fi_cq_strerror(f->cq, e.prov_errno, e.err_data, NULL, 0);
        snprintf(msg, msglen, "%s (provider: %s)", fi_strerror(errs[0]), detail ? detail : "no detail");
    }
    return 1;
}

/* The text of a (positive or negative) libfabric error code. */
const char *rf_strerror(int code) { return fi_strerror(code < 0 ? -code : code); }

/* 1 when a (positive or negative) error code says the connection to the peer failed or
 * went away (worth a new connection), else 0. */
int rf_is_conn_error(int code) {
    switch (code < 0 ? -code : code) {
    case FI_ECONNREFUSED:
    case FI_ECONNRESET:
    case FI_ECONNABORTED:
    case FI_ENOTCONN:
    case EPIPE:
    case FI_EHOSTUNREACH:
    case FI_ENETUNREACH:
        return 1;
    default:
        return 0;
    }
}

/* Sleeps until the provider has something to progress (data on a socket, a completion),
 * rf_wake is called, or timeout_ms passes (fi_trywait, then poll(2) on the CQ's wait
 * object and the wake eventfd). Returns 1 when woken by an event (rf_poll then), 0 on
 * timeout, a negative error otherwise. Without a wait object returns 1 at once. */
int rf_wait(rf_fabric *f, int timeout_ms) {
    struct fid *fids[1] = {&f->cq->fid};
    struct pollfd p[2];
    uint64_t drain;
    int ret;
    if (f->cq_fd < 0) return 1;
    ret = fi_trywait(f->fabric, fids, 1);
    if (ret == -FI_EAGAIN) return 1;
    if (ret) return ret;
    p[0].fd = f->cq_fd;
    p[0].events = POLLIN;
    p[1].fd = f->wake_fd;
    p[1].events = POLLIN;
    p[0].revents = p[1].revents = 0;
    ret = poll(p, 2, timeout_ms);
    if (ret < 0) return errno == EINTR ? 1 : -errno;
    if (p[1].revents & POLLIN) {
        if (read(f->wake_fd, &drain, sizeof drain) < 0) { /* already drained */
        }
    }
    return ret > 0;
}

/* Wakes a thread sleeping in rf_wait. */
void rf_wake(rf_fabric *f) {
    uint64_t one = 1;
    if (f->wake_fd >= 0 && write(f->wake_fd, &one, sizeof one) < 0) { /* the counter is full: awake anyway */
    }
}
