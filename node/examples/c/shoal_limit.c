/* Asks the local sidecar about hits of one IPv4 source under a named
 * limit, in batches of up to 64, and prints what it allowed:
 *
 *   shoal_limit SOCKET LIMIT_NAME IPV4 HITS
 *   allowed=5 denied=15 too_large=0 refused=0 last_retry_after_us=...
 *
 * Exit 0, 1 (socket or I/O error) or 2 (usage). */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "shoal.h"

int main(int argc, char **argv)
{
    struct shoal_limit_hit hits[SHOAL_MAX_RECORDS];
    struct in_addr a;
    long total, done = 0, allowed = 0, denied = 0, too_large = 0, refused = 0;
    uint64_t retry = 0;
    uint32_t id;
    int fd, refused_reason = 0;
    size_t i, n;

    if (argc != 5 || inet_pton(AF_INET, argv[3], &a) != 1 || (total = atol(argv[4])) <= 0) {
        fprintf(stderr, "usage: %s SOCKET LIMIT_NAME IPV4 HITS\n", argv[0]);
        return 2;
    }
    id = shoal_limit_id(argv[2]);
    fd = shoal_open(argv[1]);
    if (fd < 0) {
        perror("shoal_open");
        return 1;
    }
    while (done < total) {
        n = (size_t)(total - done < SHOAL_MAX_RECORDS ? total - done : SHOAL_MAX_RECORDS);
        for (i = 0; i < n; i++) {
            hits[i].limit = id;
            hits[i].key = shoal_key_ipv4(ntohl(a.s_addr));
            hits[i].n = 1;
        }
        if (shoal_limit(fd, hits, n, 1000) < 0) {
            perror("shoal_limit");
            close(fd);
            return 1;
        }
        for (i = 0; i < n; i++) {
            switch (hits[i].verdict) {
            case SHOAL_LIMIT_ALLOW: allowed++; break;
            case SHOAL_LIMIT_DENY: denied++; retry = hits[i].retry_after_us; break;
            case SHOAL_LIMIT_TOO_LARGE: too_large++; break;
            default: refused++; refused_reason = -hits[i].verdict; break;
            }
        }
        done += (long)n;
    }
    printf("allowed=%ld denied=%ld too_large=%ld refused=%ld reason=%d last_retry_after_us=%" PRIu64 "\n",
           allowed, denied, too_large, refused, refused_reason, retry);
    close(fd);
    return 0;
}
