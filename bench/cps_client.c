/* New TCP connections per second against an HTTP server: the load generator of
 * bench/slowpath.py (which builds it with gcc and runs it in the client namespace).
 *
 * Every connection is a new 5-tuple: each thread binds its sockets to source addresses and
 * ports of its own slice of SRC_BASE..SRC_BASE+SRC_COUNT-1 x PORT_LO..PORT_HI, never twice.
 * A connection is: connect() (the SYN leaves), one "GET / HTTP/1.0" request, read the answer
 * to EOF (the server closes), close. Latencies: `connect` from just before connect() (the
 * SYN) to its return (the SYN-ACK arrived), `total` to the close.
 *
 * usage: cps_client DST_IP DST_PORT THREADS SECONDS SRC_BASE SRC_COUNT PORT_LO PORT_HI RATE
 *   RATE: connections per second over all threads, paced (0: as fast as they go): thread i
 *   of N starts i/RATE s after the first and then every N/RATE s, so the connections are
 *   evenly spaced, 1/RATE s apart (threads started in step would send bursts of N)
 * Prints one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES (4u << 20)

struct worker {
    pthread_t thread;
    uint32_t src_first, src_count; /* host order */
    uint32_t port_lo, port_hi, next_src, next_port;
    double interval_s; /* 0: unpaced */
    double phase_s;    /* paced: when this thread's first connection starts, after `start` */
    uint64_t attempts, done, errors, refused, timeouts, exhausted, bad_answers;
    float *connect_us, *total_us;
    size_t samples;
};

static struct sockaddr_in dst;
static double start, deadline;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int next_source(struct worker *w, struct sockaddr_in *src) {
    if (w->next_src >= w->src_first + w->src_count)
        return -1;
    memset(src, 0, sizeof(*src));
    src->sin_family = AF_INET;
    src->sin_addr.s_addr = htonl(w->next_src);
    src->sin_port = htons(w->next_port);
    if (++w->next_port > w->port_hi) {
        w->next_port = w->port_lo;
        w->next_src++;
    }
    return 0;
}

static void one_connection(struct worker *w) {
    static const char request[] = "GET / HTTP/1.0\r\nHost: bench\r\n\r\n";
    struct sockaddr_in src;
    if (next_source(w, &src) != 0) {
        w->exhausted++;
        return;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        w->errors++;
        return;
    }
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* bounds connect() too */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
        w->errors++;
        close(fd);
        return;
    }
    double t0 = now_s();
    w->attempts++;
    if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) != 0) {
        if (errno == ECONNREFUSED)
            w->refused++;
        else if (errno == EINPROGRESS || errno == ETIMEDOUT || errno == EAGAIN)
            w->timeouts++;
        else
            w->errors++;
        close(fd);
        return;
    }
    double t1 = now_s();
    char buf[1024];
    size_t got = 0;
    int ok = send(fd, request, sizeof(request) - 1, MSG_NOSIGNAL) == sizeof(request) - 1;
    char head[16] = {0};
    while (ok) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n == 0)
            break;
        if (n < 0) {
            ok = 0;
            break;
        }
        if (got < sizeof(head) - 1) {
            size_t take = (size_t)n < sizeof(head) - 1 - got ? (size_t)n : sizeof(head) - 1 - got;
            memcpy(head + got, buf, take);
        }
        got += n;
    }
    close(fd);
    double t2 = now_s();
    /* "HTTP/1.x 200" */
    if (!ok || got < 12 || strncmp(head, "HTTP/1.", 7) != 0 || strncmp(head + 9, "200", 3) != 0) {
        w->bad_answers++;
        return;
    }
    w->done++;
    if (w->samples < MAX_SAMPLES) {
        w->connect_us[w->samples] = (float)((t1 - t0) * 1e6);
        w->total_us[w->samples] = (float)((t2 - t0) * 1e6);
        w->samples++;
    }
}

static void *run(void *arg) {
    struct worker *w = arg;
    double next = start + w->phase_s;
    while (now_s() < deadline) {
        if (w->interval_s > 0) {
            double wait = next - now_s();
            if (wait > 0) {
                struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
                nanosleep(&ts, NULL);
            }
            next += w->interval_s;
            if (now_s() >= deadline)
                break;
        }
        one_connection(w);
    }
    return NULL;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double pct(float *v, size_t n, double q) {
    if (!n)
        return -1;
    size_t i = (size_t)(q * n);
    return v[i < n ? i : n - 1];
}

static void print_dist(const char *name, float *v, size_t n, int last) {
    qsort(v, n, sizeof(float), cmp_float);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    printf("\"%s_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"p999\": %.1f, "
           "\"max\": %.1f, \"mean\": %.1f}%s",
           name, pct(v, n, 0.5), pct(v, n, 0.9), pct(v, n, 0.99), pct(v, n, 0.999),
           n ? v[n - 1] : -1.0, n ? sum / n : -1.0, last ? "" : ", ");
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s DST_IP DST_PORT THREADS SECONDS SRC_BASE SRC_COUNT PORT_LO "
                        "PORT_HI RATE\n", argv[0]);
        return 2;
    }
    dst.sin_family = AF_INET;
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
        fprintf(stderr, "bad destination address %s\n", argv[1]);
        return 2;
    }
    dst.sin_port = htons(atoi(argv[2]));
    int threads = atoi(argv[3]);
    double seconds = atof(argv[4]);
    struct in_addr base;
    if (inet_pton(AF_INET, argv[5], &base) != 1) {
        fprintf(stderr, "bad source address %s\n", argv[5]);
        return 2;
    }
    uint32_t src_count = atoi(argv[6]), port_lo = atoi(argv[7]), port_hi = atoi(argv[8]);
    double rate = atof(argv[9]);
    if (threads < 1 || (uint32_t)threads > src_count || port_lo > port_hi || seconds <= 0) {
        fprintf(stderr, "need 1 <= THREADS <= SRC_COUNT, PORT_LO <= PORT_HI, SECONDS > 0\n");
        return 2;
    }
    struct worker *ws = calloc(threads, sizeof(*ws));
    uint32_t per = src_count / threads, first = ntohl(base.s_addr);
    for (int i = 0; i < threads; i++) {
        struct worker *w = &ws[i];
        w->src_first = w->next_src = first + i * per;
        w->src_count = per;
        w->port_lo = w->next_port = port_lo;
        w->port_hi = port_hi;
        w->interval_s = rate > 0 ? threads / rate : 0;
        w->phase_s = rate > 0 ? i / rate : 0;
        w->connect_us = malloc(MAX_SAMPLES / threads * sizeof(float) + sizeof(float));
        w->total_us = malloc(MAX_SAMPLES / threads * sizeof(float) + sizeof(float));
    }
    start = now_s();
    deadline = start + seconds;
    for (int i = 0; i < threads; i++)
        pthread_create(&ws[i].thread, NULL, run, &ws[i]);
    uint64_t attempts = 0, done = 0, errors = 0, refused = 0, timeouts = 0, exhausted = 0, bad = 0;
    size_t n = 0;
    for (int i = 0; i < threads; i++)
        pthread_join(ws[i].thread, NULL);
    double elapsed = now_s() - start;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                   ru.ru_stime.tv_usec / 1e6;
    for (int i = 0; i < threads; i++)
        n += ws[i].samples < MAX_SAMPLES / threads ? ws[i].samples : MAX_SAMPLES / threads;
    float *connect_us = malloc(n * sizeof(float) + 1), *total_us = malloc(n * sizeof(float) + 1);
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        struct worker *w = &ws[i];
        size_t m = w->samples < MAX_SAMPLES / threads ? w->samples : MAX_SAMPLES / threads;
        memcpy(connect_us + k, w->connect_us, m * sizeof(float));
        memcpy(total_us + k, w->total_us, m * sizeof(float));
        k += m;
        attempts += w->attempts;
        done += w->done;
        errors += w->errors;
        refused += w->refused;
        timeouts += w->timeouts;
        exhausted += w->exhausted;
        bad += w->bad_answers;
    }
    printf("{\"attempts\": %llu, \"connections\": %llu, \"seconds\": %.3f, \"cps\": %.1f, \"threads\": %d, "
           "\"offered_rate\": %.1f, \"errors\": %llu, \"refused\": %llu, \"timeouts\": %llu, "
           "\"sources_exhausted\": %llu, \"bad_answers\": %llu, \"cpu_s\": %.4f, ",
           (unsigned long long)attempts, (unsigned long long)done, elapsed, done / elapsed, threads, rate,
           (unsigned long long)errors, (unsigned long long)refused,
           (unsigned long long)timeouts, (unsigned long long)exhausted,
           (unsigned long long)bad, cpu_s);
    print_dist("connect", connect_us, k, 0);
    print_dist("total", total_us, k, 1);
    printf("}\n");
    return 0;
}
