/*
 * An open-loop HTTP/1.1 load generator: requests leave at their scheduled time, whatever
 * came back, and latency is measured from each request's *intended* send time (no
 * coordinated omission). The Python generator (openloop.py) tops out near 1,000 req/s on
 * this class of machine; this one holds tens of thousands on one core, so a fixed rate at
 * half a fast proxy's capacity measures the proxy, not the generator.
 *
 *   cc -O2 -o openloop loadtests/openloop.c -lm
 *   ./openloop HOST PORT PATH RATE SECONDS CONNECTIONS BODY_FILE
 *
 * Prints one JSON line: {"sent", "ok", "errors", "rate", "p50_ms", "p90_ms", "p99_ms",
 * "late_p99_ms"}. `rate` is the send rate achieved; `late_p99_ms` how late the generator
 * itself sent (its own limit shows there first). A request that finds every connection
 * busy waits in a queue, its clock already running.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF 65536

typedef struct {
    int fd;
    int busy;           /* a request is in flight */
    double intended;    /* its scheduled send time */
    char buf[RBUF];
    size_t len;
    long need;          /* body bytes still expected (content-length), -1 while in headers */
    int chunked;
    int status;
} conn_t;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, long n, double q) {
    if (n == 0) return -1;
    long i = (long)(q * n);
    if (i >= n) i = n - 1;
    return v[i];
}

static struct sockaddr_in addr;
static int ep;

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void reconnect(conn_t *c, int idx) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = dial();
    c->len = 0;
    c->need = -1;
    c->chunked = 0;
    c->busy = 0;
    if (c->fd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)idx};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
}

/* Consume a complete chunked body from buf[0..len); returns bytes used, 0 if incomplete. */
static size_t chunked_end(const char *buf, size_t len) {
    size_t i = 0;
    for (;;) {
        const char *crlf = memmem(buf + i, len - i, "\r\n", 2);
        if (!crlf) return 0;
        long size = strtol(buf + i, NULL, 16);
        size_t line = (size_t)(crlf - (buf + i)) + 2;
        if (size == 0) {
            /* no trailers expected: the terminating CRLF follows */
            if (len - i < line + 2) return 0;
            return i + line + 2;
        }
        if (len - i < line + (size_t)size + 2) return 0;
        i += line + (size_t)size + 2;
    }
}

/* Parse what arrived; returns 1 when the response is complete (and consumed). */
static int parse(conn_t *c) {
    if (c->need < 0) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) return 0;
        size_t head = (size_t)(end - c->buf) + 4;
        c->status = atoi(c->buf + 9);
        c->need = 0;
        c->chunked = 0;
        for (char *p = c->buf; p < end; p++) {
            if (*p != '\n') continue;
            if (!strncasecmp(p + 1, "content-length:", 15)) c->need = atol(p + 16);
            if (!strncasecmp(p + 1, "transfer-encoding:", 18) && memmem(p, (size_t)(end - p), "chunked", 7))
                c->chunked = 1;
        }
        memmove(c->buf, c->buf + head, c->len - head);
        c->len -= head;
    }
    if (c->chunked) {
        size_t used = chunked_end(c->buf, c->len);
        if (!used) return 0;
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
    } else {
        if ((long)c->len < c->need) return 0;
        memmove(c->buf, c->buf + c->need, c->len - (size_t)c->need);
        c->len -= (size_t)c->need;
    }
    c->need = -1;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT PATH RATE SECONDS CONNECTIONS BODY_FILE\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = argv[3];
    double rate = atof(argv[4]), seconds = atof(argv[5]);
    int nconn = atoi(argv[6]);
    FILE *bf = fopen(argv[7], "rb");
    if (!bf) { perror("body"); return 2; }
    static char body[65536];
    size_t blen = fread(body, 1, sizeof body, bf);
    fclose(bf);
    char *req = malloc(blen + 512);
    int hlen = snprintf(req, 512,
                        "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n\r\n", path, host, argv[2], blen);
    memcpy(req + hlen, body, blen);
    size_t rlen = (size_t)hlen + blen;

    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, host, &addr.sin_addr);
    ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    for (int i = 0; i < nconn; i++) { conns[i].fd = -1; reconnect(&conns[i], i); }

    long total = (long)(rate * seconds);
    double *lat = malloc(sizeof(double) * (size_t)(total + 1));
    double *late = malloc(sizeof(double) * (size_t)(total + 1));
    double *queue = malloc(sizeof(double) * (size_t)(total + 1)); /* intended times waiting */
    long qhead = 0, qtail = 0, sent = 0, ok = 0, errors = 0, done = 0, nlat = 0;
    double start = now() + 0.05, last_send = start;
    struct epoll_event evs[256];

    while (done < total) {
        double t = now();
        /* schedule: every request whose time has come joins the queue */
        while (sent < total && start + sent / rate <= t) {
            double intended = start + sent / rate;
            late[sent] = t - intended;
            queue[qtail++] = intended;
            sent++;
            last_send = t;
        }
        /* hand queued requests to idle connections */
        for (int i = 0; i < nconn && qhead < qtail; i++) {
            conn_t *c = &conns[i];
            if (c->busy || c->fd < 0) continue;
            ssize_t w = send(c->fd, req, rlen, MSG_NOSIGNAL);
            if (w != (ssize_t)rlen) {
                /* connecting or broken: try it again next round */
                if (w < 0 && (errno == EAGAIN || errno == ENOTCONN)) continue;
                reconnect(c, i);
                continue;
            }
            c->busy = 1;
            c->intended = queue[qhead++];
        }
        if (sent >= total && qhead == qtail) {
            /* all sent: wait for the answers, at most 5 s past the schedule */
            if (t > start + seconds + 5.0) break;
        }
        int timeout_ms = 1;
        if (sent < total) {
            double next = start + sent / rate - now();
            timeout_ms = next > 0 ? (int)(next * 1000) : 0;
        }
        int n = epoll_wait(ep, evs, 256, timeout_ms);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            conn_t *c = &conns[i];
            for (;;) {
                ssize_t r = recv(c->fd, c->buf + c->len, RBUF - c->len, 0);
                if (r > 0) {
                    c->len += (size_t)r;
                    while (c->busy && parse(c)) {
                        double d = now() - c->intended;
                        if (c->status == 200) { lat[nlat++] = d; ok++; } else errors++;
                        done++;
                        c->busy = 0;
                    }
                    if (c->len == RBUF) { errors += c->busy; done += c->busy; reconnect(c, i); break; }
                    continue;
                }
                if (r < 0 && errno == EAGAIN) break;
                /* closed or failed: the request in flight is lost */
                if (c->busy) { errors++; done++; }
                reconnect(c, i);
                break;
            }
        }
    }
    errors += total - done;
    qsort(lat, (size_t)nlat, sizeof(double), cmp);
    qsort(late, (size_t)sent, sizeof(double), cmp);
    double span = last_send - start;
    printf("{\"sent\": %ld, \"ok\": %ld, \"errors\": %ld, \"rate\": %.1f, \"p50_ms\": %.3f, "
           "\"p90_ms\": %.3f, \"p99_ms\": %.3f, \"late_p99_ms\": %.3f}\n",
           sent, ok, errors, span > 0 ? (sent - 1) / span : 0.0, pct(lat, nlat, 0.5) * 1e3,
           pct(lat, nlat, 0.9) * 1e3, pct(lat, nlat, 0.99) * 1e3, pct(late, sent, 0.99) * 1e3);
    return 0;
}
