/*
 * shoal_example - talk to a shoal sidecar over its local socket.
 *
 *   shoal_example SOCKET_PATH RESOURCE RATE
 *       sends LOAD(RESOURCE, RATE), then repeats QUERY_LOAD (up to 2 s in
 *       all) until the sidecar's own value for RESOURCE equals RATE, and
 *       prints: resource=<id> total=<t> local=<l> nodes=<n>
 *       (if the own value never matches, the last answer is printed with a
 *       warning on stderr: another filter on the node may have sent a rate)
 *   shoal_example SOCKET_PATH --mode RESOURCE
 *       prints: resource=<id> level=<l> origin=<o> remaining_ms=<ms>
 *
 * Exit 0 on success, 1 on timeout or error (message on stderr), 2 on usage.
 *
 * Build: cc -std=c99 -Wall -Wextra -I node/include \
 *           -o shoal_example node/examples/c/shoal_example.c
 */
#define _POSIX_C_SOURCE 200809L /* CLOCK_MONOTONIC, nanosleep */

#include "shoal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 2000
#define RETRY_MS 100

static int usage(void)
{
    fprintf(stderr,
            "usage: shoal_example SOCKET_PATH RESOURCE RATE\n"
            "       shoal_example SOCKET_PATH --mode RESOURCE\n");
    return 2;
}

/* Parses a decimal u64; returns 0 on success. */
static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (*s == '\0' || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void report_error(const char *what, int rc, const struct shoal_record *r)
{
    if (rc == -2)
        fprintf(stderr, "shoal_example: %s: sidecar error reason %" PRIu64
                        " at record %" PRIu64 "\n", what, r->fields[0], r->fields[1]);
    else
        fprintf(stderr, "shoal_example: %s: %s\n", what, strerror(errno));
}

/* Queries until done(reply) holds or DEADLINE_MS passes since start.
 * Returns 0 when done, 1 when the deadline passed after at least one answer
 * (the last one is in *reply), -1 on error or when nothing answered. */
static int query_until(int fd, uint16_t code, uint64_t key, struct shoal_record *reply,
                       int64_t start, uint64_t want_f2, int check_f2, const char *what)
{
    struct shoal_record r;
    int rc, answered = 0;
    for (;;) {
        int64_t left = DEADLINE_MS - (now_ms() - start);
        if (left <= 0)
            break;
        rc = shoal_query(fd, code, key, &r, (int)(left < RETRY_MS * 5 ? left : RETRY_MS * 5));
        if (rc == 0) {
            *reply = r;
            answered = 1;
            if (!check_f2 || r.fields[2] == want_f2)
                return 0;
            sleep_ms(RETRY_MS); /* our LOAD not applied yet: ask again */
        } else if (rc == -2 || (errno != ETIMEDOUT && errno != EAGAIN)) {
            report_error(what, rc, &r);
            return -1;
        } else if (errno == EAGAIN) {
            sleep_ms(RETRY_MS);
        }
    }
    if (answered)
        return 1;
    fprintf(stderr, "shoal_example: %s: no reply within %d ms\n", what, DEADLINE_MS);
    return -1;
}

int main(int argc, char **argv)
{
    struct shoal_record reply;
    uint64_t resource, rate = 0;
    int mode_query, fd, rc;
    int64_t start = now_ms();

    if (argc != 4)
        return usage();
    mode_query = strcmp(argv[2], "--mode") == 0;
    if (mode_query ? parse_u64(argv[3], &resource) != 0
                   : parse_u64(argv[2], &resource) != 0 || parse_u64(argv[3], &rate) != 0)
        return usage();

    fd = shoal_open(argv[1]);
    if (fd < 0) {
        fprintf(stderr, "shoal_example: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }

    if (mode_query) {
        if (query_until(fd, SHOAL_CODE_QUERY_MODE, resource, &reply, start, 0, 0,
                        "QUERY_MODE") < 0) {
            close(fd);
            return 1;
        }
        printf("resource=%" PRIu64 " level=%" PRIu64 " origin=%" PRIu64
               " remaining_ms=%" PRIu64 "\n",
               resource, reply.fields[1], reply.fields[3], reply.fields[2]);
    } else {
        if (shoal_load(fd, resource, rate) < 0) {
            fprintf(stderr, "shoal_example: LOAD: %s\n", strerror(errno));
            close(fd);
            return 1;
        }
        rc = query_until(fd, SHOAL_CODE_QUERY_LOAD, resource, &reply, start, rate, 1,
                         "QUERY_LOAD");
        if (rc < 0) {
            close(fd);
            return 1;
        }
        if (rc > 0)
            fprintf(stderr, "shoal_example: warning: local load is %" PRIu64
                            ", not the %" PRIu64 " just sent\n", reply.fields[2], rate);
        printf("resource=%" PRIu64 " total=%" PRIu64 " local=%" PRIu64 " nodes=%" PRIu64 "\n",
               resource, reply.fields[1], reply.fields[2], reply.fields[3]);
    }
    close(fd);
    return fflush(stdout) == 0 ? 0 : 1;
}
