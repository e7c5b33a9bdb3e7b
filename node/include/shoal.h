/*
 * shoal.h - header-only C99/C++ client for the shoal sidecar's local API.
 *
 * The sidecar listens on a Unix datagram socket. Each datagram is 1..64
 * concatenated 64-byte records, all integers little-endian (layout in
 * wire/src/record.rs, protocol in docs/local-api.md). Linux only: the
 * client socket is autobound to an abstract address so that the sidecar
 * can reply to queries.
 *
 * Threads: shoal_send() may be shared by threads (one send(2) per call).
 * shoal_query() reads replies from the socket, so give each querying
 * thread its own fd.
 *
 * Under strict ISO C (-std=c99) the timeout clock is gettimeofday(); define
 * _POSIX_C_SOURCE >= 199309L (or _GNU_SOURCE) before any include to get
 * CLOCK_MONOTONIC.
 */
#ifndef SHOAL_H
#define SHOAL_H

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Framing. */
#define SHOAL_RECORD_LEN 64     /* bytes per record */
#define SHOAL_MAX_RECORDS 64    /* records per datagram */

/* Codes: ingest. */
#define SHOAL_CODE_LOAD 0x0001u          /* f0 resource, f1 rate req/s, f2 window ms */
#define SHOAL_CODE_MODE 0x0002u          /* f0 resource, f1 level (0 withdraws); ttl_ms */
#define SHOAL_CODE_SESSION_MARK 0x0003u  /* f0 session key, f1 SHOAL_MARK_*; ttl_ms */
#define SHOAL_CODE_REMOTE_MODE 0x0004u   /* f0 resource, f1 level, f2 cluster<<32|node, f3 queue seq */
#define SHOAL_CODE_BLOCK 0x0005u         /* f0/f1 address, f2 len | family<<8, f3 reason; ttl_ms > 0 */
#define SHOAL_CODE_UNBLOCK 0x0006u       /* fields as BLOCK; ttl_ms: how long it is remembered */
#define SHOAL_CODE_REMOTE_BLOCK 0x0007u  /* datagrams only: from another cluster's forwarder */
/* Codes: queries (f0 = key), answers in f1..f3 of the reply. */
#define SHOAL_CODE_QUERY_LOAD 0x0101u    /* f1 cluster total, f2 own, f3 nodes */
#define SHOAL_CODE_QUERY_MODE 0x0102u    /* f1 level, f2 remaining ms, f3 claimant (node, or cluster<<32|node if remote) */
#define SHOAL_CODE_QUERY_SESSION 0x0103u /* f1 mark, f2 remaining ms, f3 origin */
#define SHOAL_CODE_QUERY_LIMIT 0x0104u   /* f0 limit id, f1 key, f2 hits -> f2 SHOAL_LIMIT_*, f3 retry-after us */
#define SHOAL_CODE_REPLY_ERROR 0x01ffu   /* f0 SHOAL_ERR_*, f1 record index */
/* Codes 0x8000..0xffff: application-defined, relayed as is. */
#define SHOAL_CODE_EXTENSION_FIRST 0x8000u

/* Ops (bit flags; 0 is treated as SEND). */
#define SHOAL_OP_SEND 0x01u      /* multicast to the cluster */
#define SHOAL_OP_SAVE 0x02u      /* persist */
#define SHOAL_OP_SEND_SAVE 0x03u

/* Session marks (f1 of SESSION_MARK, answer f1 of QUERY_SESSION). */
#define SHOAL_MARK_NONE 0u
#define SHOAL_MARK_LEGITIMATE 1u
#define SHOAL_MARK_SUSPICIOUS 2u

/* Error reasons (f0 of a SHOAL_CODE_REPLY_ERROR record). */
#define SHOAL_ERR_LENGTH 1u       /* datagram empty or not a multiple of 64 */
#define SHOAL_ERR_MALFORMED 2u    /* non-zero reserved bytes or bad op */
#define SHOAL_ERR_UNKNOWN_CODE 3u /* code not known to the sidecar */
#define SHOAL_ERR_TOO_MANY 4u     /* more than 64 records */
#define SHOAL_ERR_STORE_FULL 5u   /* applied and sent, not saved: store backlog full */
#define SHOAL_ERR_BLOCKS_UNSIGNED 6u /* BLOCK/UNBLOCK refused: cluster without [auth] */
#define SHOAL_ERR_BLOCK_REFUSED 7u /* BLOCK never enforced here: allowlist or too short */
#define SHOAL_ERR_UNKNOWN_LIMIT 8u /* QUERY_LIMIT: no limit with that id */

/* Verdicts of a QUERY_LIMIT reply (f2). */
#define SHOAL_LIMIT_ALLOW 1u
#define SHOAL_LIMIT_DENY 2u      /* f3: microseconds until the same hits would pass here */
#define SHOAL_LIMIT_TOO_LARGE 3u /* more hits at once than the limit's burst: never */

/* One record, fields in host order. */
struct shoal_record {
    uint64_t timing_us; /* us since the Unix epoch; 0 = sidecar stamps now */
    uint64_t seq;       /* stamped by the sidecar; request id in queries */
    uint32_t origin;    /* stamped by the sidecar (its node id) */
    uint32_t ttl_ms;    /* lifetime of MODE / SESSION_MARK */
    uint16_t code;      /* SHOAL_CODE_* */
    uint8_t op;         /* SHOAL_OP_* */
    uint64_t fields[4]; /* f0..f3, meaning depends on code */
};

/* Zeroes *r and sets code and op. */
static inline void shoal_record_init(struct shoal_record *r, uint16_t code, uint8_t op)
{
    memset(r, 0, sizeof *r);
    r->code = code;
    r->op = op;
}

static inline void shoal__put_le(unsigned char *p, uint64_t v, int len)
{
    int i;
    for (i = 0; i < len; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline uint64_t shoal__get_le(const unsigned char *p, int len)
{
    uint64_t v = 0;
    int i;
    for (i = 0; i < len; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Writes r into exactly 64 bytes (reserved bytes 27..31 zeroed). */
static inline void shoal_encode(const struct shoal_record *r, unsigned char out[SHOAL_RECORD_LEN])
{
    int i;
    shoal__put_le(out + 0, r->timing_us, 8);
    shoal__put_le(out + 8, r->seq, 8);
    shoal__put_le(out + 16, r->origin, 4);
    shoal__put_le(out + 20, r->ttl_ms, 4);
    shoal__put_le(out + 24, r->code, 2);
    out[26] = r->op;
    memset(out + 27, 0, 5);
    for (i = 0; i < 4; i++)
        shoal__put_le(out + 32 + 8 * i, r->fields[i], 8);
}

/* Reads 64 bytes into *r (padding zeroed, so records compare with
 * memcmp). Returns 0, or -1 (errno EBADMSG, *r untouched) when the
 * reserved bytes are non-zero or op has bits other than 0x03. */
static inline int shoal_decode(const unsigned char in[SHOAL_RECORD_LEN], struct shoal_record *r)
{
    int i;
    if ((in[27] | in[28] | in[29] | in[30] | in[31]) != 0 || (in[26] & ~0x03u) != 0) {
        errno = EBADMSG;
        return -1;
    }
    memset(r, 0, sizeof *r);
    r->timing_us = shoal__get_le(in + 0, 8);
    r->seq = shoal__get_le(in + 8, 8);
    r->origin = (uint32_t)shoal__get_le(in + 16, 4);
    r->ttl_ms = (uint32_t)shoal__get_le(in + 20, 4);
    r->code = (uint16_t)shoal__get_le(in + 24, 2);
    r->op = in[26];
    for (i = 0; i < 4; i++)
        r->fields[i] = shoal__get_le(in + 32 + 8 * i, 8);
    return 0;
}

/* Connects fd to the sidecar socket at path (also to re-target after a
 * sidecar restart, see shoal_send). Returns 0, or -1 with errno. */
static inline int shoal_connect(int fd, const char *path)
{
    struct sockaddr_un sa;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof sa.sun_path) {
        errno = len ? ENAMETOOLONG : EINVAL;
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, len + 1);
    return connect(fd, (const struct sockaddr *)&sa,
                   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1));
}

/* Opens a datagram socket, autobinds it to an abstract address (Linux) so
 * replies can reach it, and connects it to path. Returns the fd, or -1 with
 * errno. Close it with close(2). */
static inline int shoal_open(const char *path)
{
    struct sockaddr_un self;
    int fd, e;
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    memset(&self, 0, sizeof self);
    self.sun_family = AF_UNIX;
    /* addrlen == sizeof(sa_family_t): the kernel picks an abstract name. */
    if (bind(fd, (const struct sockaddr *)&self, (socklen_t)sizeof(sa_family_t)) < 0
        || shoal_connect(fd, path) < 0) {
        e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

#ifdef MSG_NOSIGNAL
#define SHOAL__SEND_FLAGS (MSG_DONTWAIT | MSG_NOSIGNAL)
#else
#define SHOAL__SEND_FLAGS MSG_DONTWAIT
#endif

/* Sends n (1..64) records as one datagram, as given (leave timing_us, seq,
 * origin 0: the sidecar stamps them). Never blocks. Returns 0, or -1 with
 * errno: EINVAL (n out of range), EAGAIN (sidecar queue full: dropped),
 * ECONNREFUSED/ENOTCONN (sidecar gone or restarted: shoal_connect again). */
static inline int shoal_send(int fd, const struct shoal_record *recs, size_t n)
{
    unsigned char buf[SHOAL_MAX_RECORDS * SHOAL_RECORD_LEN];
    size_t i;
    ssize_t sent;
    if (n == 0 || n > SHOAL_MAX_RECORDS) {
        errno = EINVAL;
        return -1;
    }
    for (i = 0; i < n; i++)
        shoal_encode(&recs[i], buf + i * SHOAL_RECORD_LEN);
    do
        sent = send(fd, buf, n * SHOAL_RECORD_LEN, SHOAL__SEND_FLAGS);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return -1;
    if ((size_t)sent != n * SHOAL_RECORD_LEN) {
        errno = EMSGSIZE;
        return -1;
    }
    return 0;
}

/* Milliseconds from an arbitrary origin, for timeouts. */
static inline int64_t shoal__now_ms(void)
{
#if defined(CLOCK_MONOTONIC)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0)
        return (int64_t)ts.tv_sec * 1000 + (int64_t)(ts.tv_nsec / 1000000);
#endif
    {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        return (int64_t)tv.tv_sec * 1000 + (int64_t)(tv.tv_usec / 1000);
    }
}

/* n fresh request ids (non-zero, ascending per translation unit): the
 * first is returned. */
static inline uint64_t shoal__take_ids(uint64_t n)
{
    static uint64_t counter;
#if defined(__GNUC__) || defined(__clang__)
    return __atomic_fetch_add(&counter, n, __ATOMIC_RELAXED) + 1;
#else
    uint64_t first = counter + 1;
    counter += n;
    return first;
#endif
}

/* A fresh request id. */
static inline uint64_t shoal__next_id(void)
{
    return shoal__take_ids(1);
}

/* Sends one query (code SHOAL_CODE_QUERY_*, f0 = key, seq = a fresh
 * request id, op 0) and waits up to timeout_ms (< 0: forever) for the reply
 * record whose seq matches; other replies are discarded. Returns 0 with the
 * answer in *reply (f1..f3); -2 with the error record in *reply (f0 =
 * SHOAL_ERR_*); or -1 with errno (ETIMEDOUT, or from send/poll/recv).
 * A code that is not a query gets no reply: ETIMEDOUT. */
static inline int shoal_query(int fd, uint16_t code, uint64_t key,
                              struct shoal_record *reply, int timeout_ms)
{
    unsigned char buf[SHOAL_MAX_RECORDS * SHOAL_RECORD_LEN];
    struct shoal_record q, r;
    struct pollfd pfd;
    int64_t deadline = shoal__now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    uint64_t id = shoal__next_id();
    ssize_t got;
    size_t i;
    int rc, wait_ms;

    shoal_record_init(&q, code, 0);
    q.seq = id;
    q.fields[0] = key;
    shoal_encode(&q, buf);
    pfd.fd = fd;
    for (;;) {
        got = send(fd, buf, SHOAL_RECORD_LEN, SHOAL__SEND_FLAGS);
        if (got == SHOAL_RECORD_LEN)
            break;
        if (got >= 0) {
            errno = EMSGSIZE;
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        pfd.events = POLLOUT; /* sidecar queue full: wait for room */
        wait_ms = timeout_ms < 0 ? -1 : (int)(deadline - shoal__now_ms());
        if (timeout_ms >= 0 && wait_ms <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (poll(&pfd, 1, wait_ms) < 0 && errno != EINTR)
            return -1;
    }

    pfd.events = POLLIN;
    for (;;) {
        wait_ms = -1;
        if (timeout_ms >= 0) {
            int64_t left = deadline - shoal__now_ms();
            wait_ms = left > 0 ? (int)left : 0;
        }
        rc = poll(&pfd, 1, wait_ms);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (rc == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return -1;
        }
        /* A reply holds one record per query/error of its request. */
        for (i = 0; i + SHOAL_RECORD_LEN <= (size_t)got; i += SHOAL_RECORD_LEN) {
            if (shoal_decode(buf + i, &r) < 0 || r.seq != id)
                continue;
            if (r.code == SHOAL_CODE_REPLY_ERROR) {
                *reply = r;
                return -2;
            }
            if (r.code == code) {
                *reply = r;
                return 0;
            }
        }
    }
}

/* The id of the limit named `name` in [[limits]]: FNV-1a 32 of the name
 * (compute it once, at start). */
static inline uint32_t shoal_limit_id(const char *name)
{
    uint32_t h = 0x811c9dc5u;
    for (; *name; name++) {
        h ^= (unsigned char)*name;
        h *= 0x01000193u;
    }
    return h;
}

/* The key of an IPv4 source for key = "addr" limits: the low 64 bits of
 * ::ffff:a.b.c.d. `addr` in host byte order (ntohl(sin_addr.s_addr)). */
static inline uint64_t shoal_key_ipv4(uint32_t addr)
{
    return 0x0000ffff00000000ull | addr;
}

/* The key of an IPv6 source: its first 64 bits (network order bytes). */
static inline uint64_t shoal_key_ipv6(const unsigned char addr[16])
{
    uint64_t k = 0;
    int i;
    for (i = 0; i < 8; i++)
        k = (k << 8) | addr[i];
    return k;
}

/* One question and answer of shoal_limit(). */
struct shoal_limit_hit {
    uint32_t limit;          /* shoal_limit_id(name) */
    uint64_t key;            /* shoal_key_ipv4(), a session key, ... */
    uint32_t n;              /* hits, >= 1 */
    /* Out: SHOAL_LIMIT_ALLOW / _DENY / _TOO_LARGE, or -(SHOAL_ERR_*) when
     * the sidecar refused the question (e.g. -8: unknown limit). */
    int verdict;
    uint64_t retry_after_us; /* with SHOAL_LIMIT_DENY */
};

/* Asks for up to 64 rate-limit decisions in one datagram (QUERY_LIMIT) and
 * waits up to timeout_ms (< 0: forever) for the one reply. Decisions are
 * made by the local sidecar from what it knows of the cluster: no round
 * trip to other nodes. Returns 0 with every hits[i].verdict set, or -1
 * with errno (EINVAL for n outside 1..64, ETIMEDOUT, or from send/poll). */
static inline int shoal_limit(int fd, struct shoal_limit_hit *hits, size_t n, int timeout_ms)
{
    unsigned char buf[SHOAL_MAX_RECORDS * SHOAL_RECORD_LEN];
    struct shoal_record q, r;
    struct pollfd pfd;
    int64_t deadline = shoal__now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    uint64_t first;
    ssize_t got;
    size_t i;
    int rc, wait_ms, found;

    if (n == 0 || n > SHOAL_MAX_RECORDS) {
        errno = EINVAL;
        return -1;
    }
    first = shoal__take_ids(n);
    for (i = 0; i < n; i++) {
        shoal_record_init(&q, SHOAL_CODE_QUERY_LIMIT, 0);
        q.seq = first + i;
        q.fields[0] = hits[i].limit;
        q.fields[1] = hits[i].key;
        q.fields[2] = hits[i].n;
        shoal_encode(&q, buf + i * SHOAL_RECORD_LEN);
        hits[i].verdict = 0;
        hits[i].retry_after_us = 0;
    }
    pfd.fd = fd;
    for (;;) {
        got = send(fd, buf, n * SHOAL_RECORD_LEN, SHOAL__SEND_FLAGS);
        if (got == (ssize_t)(n * SHOAL_RECORD_LEN))
            break;
        if (got >= 0) {
            errno = EMSGSIZE;
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        pfd.events = POLLOUT;
        wait_ms = timeout_ms < 0 ? -1 : (int)(deadline - shoal__now_ms());
        if (timeout_ms >= 0 && wait_ms <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (poll(&pfd, 1, wait_ms) < 0 && errno != EINTR)
            return -1;
    }
    pfd.events = POLLIN;
    for (;;) {
        wait_ms = -1;
        if (timeout_ms >= 0) {
            int64_t left = deadline - shoal__now_ms();
            wait_ms = left > 0 ? (int)left : 0;
        }
        rc = poll(&pfd, 1, wait_ms);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (rc == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        got = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return -1;
        }
        /* The reply holds one record per question, in order; a late reply
         * to an earlier call carries other request ids and is skipped. */
        found = 0;
        for (i = 0; i + SHOAL_RECORD_LEN <= (size_t)got; i += SHOAL_RECORD_LEN) {
            uint64_t k;
            if (shoal_decode(buf + i, &r) < 0 || r.seq < first || r.seq >= first + n)
                continue;
            k = r.seq - first;
            found = 1;
            if (r.code == SHOAL_CODE_REPLY_ERROR)
                hits[k].verdict = -(int)r.fields[0];
            else if (r.code == SHOAL_CODE_QUERY_LIMIT) {
                hits[k].verdict = (int)r.fields[2];
                hits[k].retry_after_us = r.fields[3];
            }
        }
        if (found)
            return 0;
    }
}

/* LOAD: this node's current rate (req/s) of a resource; op SEND. */
static inline int shoal_load(int fd, uint64_t resource, uint64_t rate)
{
    struct shoal_record r;
    shoal_record_init(&r, SHOAL_CODE_LOAD, SHOAL_OP_SEND);
    r.fields[0] = resource;
    r.fields[1] = rate;
    return shoal_send(fd, &r, 1);
}

/* MODE: claim protection level for ttl_ms (level 0 withdraws); op SEND. */
static inline int shoal_mode(int fd, uint64_t resource, uint64_t level, uint32_t ttl_ms)
{
    struct shoal_record r;
    shoal_record_init(&r, SHOAL_CODE_MODE, SHOAL_OP_SEND);
    r.ttl_ms = ttl_ms;
    r.fields[0] = resource;
    r.fields[1] = level;
    return shoal_send(fd, &r, 1);
}

/* SESSION_MARK: mark a session key (SHOAL_MARK_*) for ttl_ms; op SEND. */
static inline int shoal_mark(int fd, uint64_t key, uint64_t mark, uint32_t ttl_ms)
{
    struct shoal_record r;
    shoal_record_init(&r, SHOAL_CODE_SESSION_MARK, SHOAL_OP_SEND);
    r.ttl_ms = ttl_ms;
    r.fields[0] = key;
    r.fields[1] = mark;
    return shoal_send(fd, &r, 1);
}

/* BLOCK/UNBLOCK fields (docs/wire.md 2.3). addr16 is the IPv6 address in
 * network order, or NULL with v4 (host order) for IPv4; host bits below
 * len must be zero; reason is up to 8 printable ASCII bytes (or NULL). */
static inline int shoal__block(int fd, uint16_t code, const unsigned char *addr16, uint32_t v4,
                               unsigned len, uint32_t ttl_ms, const char *reason)
{
    struct shoal_record r;
    size_t i;
    shoal_record_init(&r, code, SHOAL_OP_SEND_SAVE);
    r.ttl_ms = ttl_ms;
    if (addr16) {
        for (i = 0; i < 8; i++) {
            r.fields[0] = (r.fields[0] << 8) | addr16[i];
            r.fields[1] = (r.fields[1] << 8) | addr16[8 + i];
        }
        r.fields[2] = (uint64_t)(len & 0xffu) | (6u << 8);
    } else {
        r.fields[1] = 0x0000ffff00000000ull | v4;
        r.fields[2] = (uint64_t)(len & 0xffu) | (4u << 8);
    }
    for (i = 0; reason && reason[i] && i < 8; i++)
        r.fields[3] |= (uint64_t)(unsigned char)reason[i] << (8 * i);
    return shoal_send(fd, &r, 1);
}

/* BLOCK an IPv4 prefix (addr in host order, e.g. 0xc6336400 for
 * 198.51.100.0) for ttl_ms (> 0); op SEND_SAVE. */
static inline int shoal_block_v4(int fd, uint32_t addr, unsigned len, uint32_t ttl_ms,
                                 const char *reason)
{
    return shoal__block(fd, SHOAL_CODE_BLOCK, NULL, addr, len, ttl_ms, reason);
}

/* BLOCK an IPv6 prefix (16 bytes, network order) for ttl_ms; op SEND_SAVE. */
static inline int shoal_block_v6(int fd, const unsigned char addr[16], unsigned len,
                                 uint32_t ttl_ms, const char *reason)
{
    return shoal__block(fd, SHOAL_CODE_BLOCK, addr, 0, len, ttl_ms, reason);
}

/* UNBLOCK exactly that prefix; remembered ttl_ms (use the block's). */
static inline int shoal_unblock_v4(int fd, uint32_t addr, unsigned len, uint32_t ttl_ms)
{
    return shoal__block(fd, SHOAL_CODE_UNBLOCK, NULL, addr, len, ttl_ms, NULL);
}

static inline int shoal_unblock_v6(int fd, const unsigned char addr[16], unsigned len,
                                   uint32_t ttl_ms)
{
    return shoal__block(fd, SHOAL_CODE_UNBLOCK, addr, 0, len, ttl_ms, NULL);
}

#ifdef __cplusplus
}
#endif

#endif /* SHOAL_H */
