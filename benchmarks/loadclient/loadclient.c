/*
 * loadclient: a WebSocket load client for Kiwi's benchmarks.
 *
 * Opens N WebSocket connections to HOST:PORT, subscribes each one to a
 * source in push mode, and counts the RESULT frames that arrive. It is
 * built to cost the server's opponent as little CPU as possible: one
 * thread, epoll, non-blocking sockets, one read() per readiness event into
 * a shared buffer, and only frame headers are parsed. From each RESULT
 * frame it reads just the record's "timestamp" field (milliseconds since
 * the epoch, set by the producer) to measure produce -> receive latency.
 *
 * Protocol with the benchmark runner:
 *   stderr  "READY <n>"   every connection has its SUBSCRIBE_OK
 *           "WARM"        every connection has received a warm-up record
 *                         (a RESULT whose key is base64 "warmup");
 *                         warm-up frames are never counted
 *   stdin   end of file   stop now and report
 *   stdout  one JSON object when done (counts, times, latency percentiles)
 *
 * It stops when every connection has received --expect measured frames,
 * when no frame has arrived for --quiet seconds after the first one, at
 * --timeout, or when stdin closes. With --expect 0 it only holds the
 * connections (idle-memory runs) until stdin closes or --timeout.
 *
 * --parse reads a server-to-client byte stream (optionally starting with
 * the HTTP 101 response, --handshake) from stdin instead, through the same
 * parser, --chunk bytes at a time; the unit test feeds it hand-made frames.
 *
 * Build: gcc -O2 -Wall -o loadclient loadclient.c
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 1024
#define SCRATCH_MIN (256 * 1024)
#define HIST_BUCKET_US 100            /* histogram resolution: 0.1 ms */
#define HIST_BUCKETS (60 * 10000 + 1) /* up to 60 s; the last is overflow */
#define MAX_RETRIES 5
#define STDIN_TAG ((uint64_t)-1)

enum state { S_IDLE, S_CONNECTING, S_HANDSHAKE, S_OPEN, S_DONE };

typedef struct {
    int fd;
    int index;
    enum state state;
    int retries;
    int subscribed;
    int warm;
    int failed;
    int close_code;      /* from the server's close frame, -1 if none */
    int in_fragment;     /* inside a fragmented message */
    uint64_t frames;     /* measured RESULT frames */
    unsigned char *pend; /* bytes of an incomplete frame (or header) */
    size_t pend_len, pend_cap;
    unsigned char *out; /* bytes not yet written */
    size_t out_len, out_cap;
    int want_out; /* EPOLLOUT registered */
} conn_t;

/* Options. */
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_path = "/";
static int opt_conns = 1;
static const char *opt_source = "bench";
static long opt_expect = 0;
static double opt_timeout = 120.0;
static double opt_quiet = 10.0;
static int opt_concurrency = 32;
static int opt_parse = 0;
static int opt_handshake = 0;
static size_t opt_chunk = 65536;
static long long opt_now_ms = -1; /* --parse: a fixed "now" for latencies */

/* State. */
static conn_t *conns;
static int epfd = -1;
static unsigned char *scratch;
static size_t scratch_cap;
static uint32_t *hist;
static uint64_t lat_count, lat_sum_us, lat_max_us;
static uint64_t total_frames, warmup_frames, notices, other_frames, pings, pongs_sent;
static uint64_t result_without_ts;
static int n_started, n_inflight, n_connected, n_subscribed, n_warm, n_failed, n_closed, n_done;
static int ready_said, warm_said;
static double t_start, t_first = -1, t_last = -1;
static int stop_now;
static const char *stop_reason = "running";
static char subscribe_msg[512];
static size_t subscribe_len;
static char handshake_msg[1024];
static size_t handshake_len;
static int close_codes[5000];
static int close_code_counts[5000];
static int n_close_codes;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_us(void) {
    if (opt_now_ms >= 0)
        return (int64_t)opt_now_ms * 1000;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void note(const char *fmt, int value) {
    fprintf(stderr, fmt, value);
    fflush(stderr);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (q == NULL)
        die("realloc");
    return q;
}

/* ---- outgoing bytes ---------------------------------------------------- */

static void queue_out(conn_t *c, const void *data, size_t len) {
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (c->out_len + len) * 2;
        c->out = xrealloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

/* A masked client frame (RFC 6455 5.3: clients must mask). */
static void queue_frame(conn_t *c, int opcode, const unsigned char *payload, size_t len) {
    unsigned char header[14];
    size_t h = 0;
    uint32_t mask = (uint32_t)rand() ^ (uint32_t)(c->index * 2654435761u);
    header[h++] = 0x80 | (opcode & 0x0f);
    if (len < 126) {
        header[h++] = 0x80 | (unsigned char)len;
    } else if (len < 65536) {
        header[h++] = 0x80 | 126;
        header[h++] = (len >> 8) & 0xff;
        header[h++] = len & 0xff;
    } else {
        header[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            header[h++] = ((uint64_t)len >> (8 * i)) & 0xff;
    }
    unsigned char key[4] = {mask >> 24, mask >> 16, mask >> 8, mask};
    memcpy(header + h, key, 4);
    h += 4;
    queue_out(c, header, h);
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (c->out_len + len) * 2;
        c->out = xrealloc(c->out, c->out_cap);
    }
    for (size_t i = 0; i < len; i++)
        c->out[c->out_len + i] = payload[i] ^ key[i & 3];
    c->out_len += len;
}

static void set_events(conn_t *c, int want_out) {
    if (epfd < 0 || c->fd < 0 || c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.u64 = (uint64_t)c->index};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl mod");
    c->want_out = want_out;
}

static void conn_fail(conn_t *c, const char *why);

static void flush_out(conn_t *c) {
    if (c->fd < 0) /* --parse: nothing to write to; keep the bytes */
        return;
    while (c->out_len > 0) {
        ssize_t n = write(c->fd, c->out, c->out_len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            conn_fail(c, "write");
            return;
        }
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    set_events(c, c->out_len > 0);
}

/* ---- bookkeeping ------------------------------------------------------- */

static void count_close_code(int code) {
    for (int i = 0; i < n_close_codes; i++) {
        if (close_codes[i] == code) {
            close_code_counts[i]++;
            return;
        }
    }
    if (n_close_codes < 5000) {
        close_codes[n_close_codes] = code;
        close_code_counts[n_close_codes++] = 1;
    }
}

static void check_milestones(void) {
    int alive = opt_conns - n_failed;
    if (!ready_said && n_subscribed + n_failed >= opt_conns && n_started >= opt_conns) {
        ready_said = 1;
        note("READY %d\n", n_subscribed);
    }
    if (ready_said && !warm_said && n_subscribed > 0 && n_warm >= alive) {
        warm_said = 1;
        note("WARM %d\n", n_warm);
    }
    if (opt_expect > 0 && warm_said && n_done >= alive && alive > 0 && !opt_parse) {
        stop_now = 1;
        stop_reason = "done";
    }
}

static void record_latency(int64_t lat_us) {
    if (lat_us < 0)
        lat_us = 0;
    uint64_t bucket = (uint64_t)lat_us / HIST_BUCKET_US;
    if (bucket >= HIST_BUCKETS)
        bucket = HIST_BUCKETS - 1;
    hist[bucket]++;
    lat_count++;
    lat_sum_us += (uint64_t)lat_us;
    if ((uint64_t)lat_us > lat_max_us)
        lat_max_us = (uint64_t)lat_us;
}

/* The integer after "timestamp": in a RESULT payload, or -1. Kiwi puts the
 * field last, so look near the end first. */
static long long find_timestamp(const unsigned char *p, size_t len) {
    static const char needle[] = "\"timestamp\":";
    const size_t nlen = sizeof(needle) - 1;
    const unsigned char *hit = NULL;
    if (len > 48)
        hit = memmem(p + len - 48, 48, needle, nlen);
    if (hit == NULL)
        hit = memmem(p, len, needle, nlen);
    if (hit == NULL)
        return -1;
    const unsigned char *q = hit + nlen, *end = p + len;
    while (q < end && *q == ' ')
        q++;
    if (q >= end || *q < '0' || *q > '9')
        return -1; /* null or garbage */
    long long v = 0;
    while (q < end && *q >= '0' && *q <= '9')
        v = v * 10 + (*q++ - '0');
    return v;
}

static int contains(const unsigned char *p, size_t len, const char *s) {
    return memmem(p, len, s, strlen(s)) != NULL;
}

/* One complete text message (or the first fragment of a fragmented one). */
static void on_text(conn_t *c, const unsigned char *p, size_t len) {
    size_t head = len < 40 ? len : 40;
    if (contains(p, head, "\"RESULT\"")) {
        if (contains(p, len, "\"key\":\"d2FybXVw\"")) { /* base64("warmup") */
            warmup_frames++;
            if (!c->warm) {
                c->warm = 1;
                n_warm++;
            }
            return;
        }
        double now = mono();
        if (t_first < 0)
            t_first = now;
        t_last = now;
        total_frames++;
        c->frames++;
        if (opt_expect > 0 && c->frames == (uint64_t)opt_expect)
            n_done++;
        long long ts = find_timestamp(p, len);
        if (ts >= 0)
            record_latency(wall_us() - ts * 1000);
        else
            result_without_ts++;
        return;
    }
    if (contains(p, len, "\"SUBSCRIBE_OK\"")) {
        if (!c->subscribed) {
            c->subscribed = 1;
            n_subscribed++;
            n_inflight--;
        }
        return;
    }
    if (contains(p, len, "\"SUBSCRIBE_ERROR\"")) {
        fprintf(stderr, "loadclient: SUBSCRIBE refused: %.*s\n", (int)(len < 300 ? len : 300), p);
        conn_fail(c, NULL);
        return;
    }
    if (contains(p, head, "\"NOTICE\"")) {
        notices++;
        return;
    }
    other_frames++;
}

/* Parse as many whole frames as the buffer holds; return the bytes used. */
static size_t parse_frames(conn_t *c, const unsigned char *buf, size_t len) {
    size_t pos = 0;
    while (c->state == S_OPEN && len - pos >= 2) {
        const unsigned char *f = buf + pos;
        int fin = f[0] & 0x80;
        int opcode = f[0] & 0x0f;
        int masked = f[1] & 0x80;
        uint64_t plen = f[1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (len - pos < 4)
                break;
            plen = ((uint64_t)f[2] << 8) | f[3];
            h = 4;
        } else if (plen == 127) {
            if (len - pos < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | f[2 + i];
            h = 10;
        }
        if (masked)
            h += 4; /* servers must not mask; tolerate it for counting */
        if (len - pos < h + plen)
            break;
        const unsigned char *payload = f + h;
        switch (opcode) {
        case 0x1: /* text */
            if (!fin)
                c->in_fragment = 1;
            on_text(c, payload, (size_t)plen);
            break;
        case 0x0: /* continuation: counted with its first fragment */
            if (fin)
                c->in_fragment = 0;
            break;
        case 0x2:
            other_frames++;
            break;
        case 0x8: /* close */
            c->close_code = plen >= 2 ? (payload[0] << 8) | payload[1] : 1005;
            count_close_code(c->close_code);
            n_closed++;
            conn_fail(c, NULL);
            return pos + h + (size_t)plen;
        case 0x9: /* ping: answer, or the server drops us */
            pings++;
            pongs_sent++;
            queue_frame(c, 0xA, payload, (size_t)plen);
            break;
        default: /* pong or reserved */
            break;
        }
        pos += h + (size_t)plen;
    }
    return pos;
}

/* Bytes before the WebSocket stream: the HTTP response to the upgrade. */
static size_t parse_handshake(conn_t *c, const unsigned char *buf, size_t len) {
    const unsigned char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (len > 16384)
            conn_fail(c, "handshake response too long");
        return 0;
    }
    if (len < 12 || memcmp(buf, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "loadclient: handshake refused: %.*s\n", (int)(end - buf), buf);
        conn_fail(c, NULL);
        return len;
    }
    c->state = S_OPEN;
    n_connected++;
    queue_frame(c, 0x1, (const unsigned char *)subscribe_msg, subscribe_len);
    return (size_t)(end - buf) + 4;
}

/* Feed bytes that arrived on a connection through the parsers. */
static void consume_bytes(conn_t *c, const unsigned char *buf, size_t len) {
    size_t used = 0;
    if (c->state == S_HANDSHAKE)
        used = parse_handshake(c, buf, len);
    if (c->state == S_OPEN)
        used += parse_frames(c, buf + used, len - used);
    if (c->state != S_OPEN && c->state != S_HANDSHAKE)
        return;
    size_t rest = len - used;
    if (rest > c->pend_cap) {
        c->pend_cap = rest * 2;
        c->pend = xrealloc(c->pend, c->pend_cap);
    }
    memmove(c->pend, buf + used, rest);
    c->pend_len = rest;
}

/* Make room for pend + a read; return the scratch buffer with pend copied
 * to its start. */
static unsigned char *scratch_with_pending(conn_t *c, size_t want) {
    if (scratch_cap < c->pend_len + want) {
        scratch_cap = c->pend_len + want;
        scratch = xrealloc(scratch, scratch_cap);
    }
    memcpy(scratch, c->pend, c->pend_len);
    return scratch;
}

/* ---- connections -------------------------------------------------------- */

static void conn_close_fd(conn_t *c) {
    if (c->fd >= 0) {
        if (epfd >= 0)
            epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->want_out = 0;
}

static void conn_start(conn_t *c);

static void conn_fail(conn_t *c, const char *why) {
    if (opt_parse) {
        c->state = S_DONE;
        c->failed = 1;
        return;
    }
    int retry = (c->state == S_CONNECTING || c->state == S_HANDSHAKE) && why != NULL && c->retries < MAX_RETRIES;
    if (why != NULL && !retry)
        fprintf(stderr, "loadclient: connection %d: %s: %s\n", c->index, why, strerror(errno));
    conn_close_fd(c);
    c->pend_len = 0;
    c->out_len = 0;
    if (retry) {
        c->retries++;
        c->state = S_IDLE;
        n_inflight--;
        n_started--;
        conn_start(c);
        return;
    }
    if (!c->failed) {
        if (!c->subscribed)
            n_inflight--;
        c->failed = 1;
        n_failed++;
        if (opt_expect > 0 && c->frames >= (uint64_t)opt_expect)
            n_done--; /* it is no longer counted as alive */
    }
    c->state = S_DONE;
}

static void conn_start(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket (raise the open-file limit?)");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt_port)};
    if (inet_pton(AF_INET, opt_host, &addr.sin_addr) != 1) {
        fprintf(stderr, "loadclient: --host must be an IPv4 address, got %s\n", opt_host);
        exit(2);
    }
    n_started++;
    n_inflight++;
    c->state = S_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = (uint64_t)c->index};
    c->want_out = 1;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl add");
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        conn_fail(c, "connect");
}

static void on_writable(conn_t *c) {
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0) {
            errno = err;
            conn_fail(c, "connect");
            return;
        }
        c->state = S_HANDSHAKE;
        queue_out(c, handshake_msg, handshake_len);
    }
    flush_out(c);
}

static void on_readable(conn_t *c) {
    unsigned char *buf = scratch_with_pending(c, SCRATCH_MIN);
    ssize_t n = read(c->fd, buf + c->pend_len, scratch_cap - c->pend_len);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        conn_fail(c, "read");
        return;
    }
    if (n == 0) {
        errno = ECONNRESET;
        conn_fail(c, c->state == S_OPEN && c->subscribed ? "closed by the server" : "closed during handshake");
        return;
    }
    consume_bytes(c, buf, c->pend_len + (size_t)n);
    if (c->out_len > 0 && c->fd >= 0)
        flush_out(c);
}

/* ---- report ------------------------------------------------------------- */

static double percentile_ms(double q) {
    if (lat_count == 0)
        return -1;
    /* Nearest rank: the smallest sample with at least q of all at or below. */
    double exact = q * (double)lat_count;
    uint64_t rank = (uint64_t)exact;
    if ((double)rank == exact && rank > 0)
        rank--;
    if (rank >= lat_count)
        rank = lat_count - 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen > rank)
            return (i + 0.5) * HIST_BUCKET_US / 1000.0; /* bucket middle */
    }
    return lat_max_us / 1000.0;
}

static void report(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double end = mono();
    uint64_t min_frames = UINT64_MAX, max_frames = 0;
    for (int i = 0; i < opt_conns; i++) {
        if (conns[i].frames < min_frames)
            min_frames = conns[i].frames;
        if (conns[i].frames > max_frames)
            max_frames = conns[i].frames;
    }
    if (opt_conns == 0)
        min_frames = 0;
    double duration = t_first >= 0 ? t_last - t_first : 0;
    printf("{\"conns\":%d,\"connected\":%d,\"subscribed\":%d,\"failed\":%d,\"closed_by_server\":%d,",
           opt_conns, n_connected, n_subscribed, n_failed, n_closed);
    printf("\"close_codes\":{");
    for (int i = 0; i < n_close_codes; i++)
        printf("%s\"%d\":%d", i ? "," : "", close_codes[i], close_code_counts[i]);
    printf("},\"expect_per_conn\":%ld,\"frames_total\":%llu,\"frames_per_conn_min\":%llu,"
           "\"frames_per_conn_max\":%llu,",
           opt_expect, (unsigned long long)total_frames, (unsigned long long)min_frames,
           (unsigned long long)max_frames);
    printf("\"warmup_frames\":%llu,\"notices\":%llu,\"other_frames\":%llu,\"pings\":%llu,"
           "\"results_without_timestamp\":%llu,",
           (unsigned long long)warmup_frames, (unsigned long long)notices, (unsigned long long)other_frames,
           (unsigned long long)pings, (unsigned long long)result_without_ts);
    /* CLOCK_MONOTONIC is system-wide: the runner compares these with its
     * own clock (time.monotonic) to time a run from the first produce. */
    printf("\"first_frame_s\":%.6f,\"last_frame_s\":%.6f,\"first_frame_mono\":%.6f,\"last_frame_mono\":%.6f,"
           "\"duration_s\":%.6f,\"frames_per_s\":%.1f,",
           t_first >= 0 ? t_first - t_start : -1.0, t_last >= 0 ? t_last - t_start : -1.0, t_first, t_last,
           duration, duration > 0 ? total_frames / duration : 0.0);
    printf("\"latency_ms\":{\"count\":%llu,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"p999\":%.2f,"
           "\"max\":%.2f,\"mean\":%.2f},",
           (unsigned long long)lat_count, percentile_ms(0.50), percentile_ms(0.90), percentile_ms(0.99),
           percentile_ms(0.999), lat_count ? lat_max_us / 1000.0 : -1.0,
           lat_count ? (double)lat_sum_us / lat_count / 1000.0 : -1.0);
    printf("\"cpu_user_s\":%.3f,\"cpu_sys_s\":%.3f,\"wall_s\":%.3f,\"stop_reason\":\"%s\",",
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6,
           end - t_start, stop_reason);
    if (opt_parse) {
        conn_t *c = &conns[0];
        printf("\"sent_hex\":\"");
        for (size_t i = 0; i < c->out_len; i++)
            printf("%02x", c->out[i]);
        printf("\",\"pending_bytes\":%zu,", c->pend_len);
    }
    printf("\"per_conn\":[");
    for (int i = 0; i < opt_conns; i++)
        printf("%s%llu", i ? "," : "", (unsigned long long)conns[i].frames);
    printf("]}\n");
    fflush(stdout);
}

/* ---- main loops --------------------------------------------------------- */

static int run_parse(void) {
    conn_t *c = &conns[0];
    c->fd = -1;
    c->state = opt_handshake ? S_HANDSHAKE : S_OPEN;
    if (!opt_handshake) {
        c->subscribed = 1;
        n_connected = 1;
    }
    n_started = opt_conns;
    for (;;) {
        unsigned char *buf = scratch_with_pending(c, opt_chunk);
        ssize_t n = read(0, buf + c->pend_len, opt_chunk);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("read stdin");
        }
        if (n == 0)
            break;
        if (c->state == S_OPEN || c->state == S_HANDSHAKE)
            consume_bytes(c, buf, c->pend_len + (size_t)n);
    }
    stop_reason = "stdin";
    report();
    return 0;
}

static int run_network(void) {
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct stat st;
    if (fstat(0, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = STDIN_TAG};
        epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    }
    struct epoll_event events[MAX_EVENTS];
    int next = 0;
    double deadline = t_start + opt_timeout;
    while (!stop_now) {
        while (next < opt_conns && n_inflight < opt_concurrency)
            conn_start(&conns[next++]);
        check_milestones();
        if (stop_now)
            break;
        int n = epoll_wait(epfd, events, MAX_EVENTS, 50);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            uint64_t tag = events[i].data.u64;
            if (tag == STDIN_TAG) {
                char tmp[256];
                if (read(0, tmp, sizeof tmp) <= 0) {
                    stop_now = 1;
                    stop_reason = "stdin";
                }
                continue;
            }
            conn_t *c = &conns[tag];
            if (c->fd < 0)
                continue;
            uint32_t e = events[i].events;
            if (e & EPOLLOUT)
                on_writable(c);
            if (c->fd >= 0 && (e & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                on_readable(c);
        }
        double now = mono();
        if (now > deadline) {
            stop_now = 1;
            stop_reason = "timeout";
        } else if (opt_expect > 0 && t_last >= 0 && now - t_last > opt_quiet) {
            stop_now = 1;
            stop_reason = "quiet";
        }
    }
    report();
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadclient --port P [--host 127.0.0.1] [--path /] [--conns N] [--source ID]\n"
            "                  [--expect F] [--timeout S] [--quiet S] [--concurrency K]\n"
            "       loadclient --parse [--handshake] [--chunk BYTES] [--now-ms MS] [--expect F]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && v != NULL && ++i)
        if (ARG("--host"))
            opt_host = v;
        else if (ARG("--port"))
            opt_port = atoi(v);
        else if (ARG("--path"))
            opt_path = v;
        else if (ARG("--conns"))
            opt_conns = atoi(v);
        else if (ARG("--source"))
            opt_source = v;
        else if (ARG("--expect"))
            opt_expect = atol(v);
        else if (ARG("--timeout"))
            opt_timeout = atof(v);
        else if (ARG("--quiet"))
            opt_quiet = atof(v);
        else if (ARG("--concurrency"))
            opt_concurrency = atoi(v);
        else if (ARG("--chunk"))
            opt_chunk = (size_t)atol(v);
        else if (ARG("--now-ms"))
            opt_now_ms = atoll(v);
        else if (strcmp(a, "--parse") == 0)
            opt_parse = 1;
        else if (strcmp(a, "--handshake") == 0)
            opt_handshake = 1;
        else
            usage();
#undef ARG
    }
    if (opt_parse)
        opt_conns = 1;
    if ((!opt_parse && opt_port <= 0) || opt_conns < 0 || opt_concurrency < 1 || opt_chunk < 1)
        usage();
    if (strlen(opt_source) > 300 || strpbrk(opt_source, "\"\\") != NULL) {
        fprintf(stderr, "loadclient: --source must be at most 300 characters, without quotes or backslashes\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)getpid());
    subscribe_len = (size_t)snprintf(subscribe_msg, sizeof subscribe_msg,
                                     "{\"type\":\"SUBSCRIBE\",\"sourceId\":\"%s\",\"mode\":\"push\"}", opt_source);
    handshake_len = (size_t)snprintf(handshake_msg, sizeof handshake_msg,
                                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                     "Sec-WebSocket-Version: 13\r\n\r\n",
                                     opt_path, opt_host, opt_port);
    conns = calloc((size_t)(opt_conns > 0 ? opt_conns : 1), sizeof(conn_t));
    hist = calloc(HIST_BUCKETS, sizeof(uint32_t));
    scratch_cap = SCRATCH_MIN;
    scratch = malloc(scratch_cap);
    if (conns == NULL || hist == NULL || scratch == NULL)
        die("calloc");
    for (int i = 0; i < opt_conns; i++) {
        conns[i].fd = -1;
        conns[i].index = i;
        conns[i].close_code = -1;
    }
    t_start = mono();
    return opt_parse ? run_parse() : run_network();
}
