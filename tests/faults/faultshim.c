/*
 * faultshim: an LD_PRELOAD shim for conch's fault tests (test-only; see tests/faults/shim.py).
 *
 * Build:  cc -shared -fPIC -O2 -o faultshim.so faultshim.c -ldl
 *
 * Clocks. A control file, mmapped read-only at load (path in CONCH_FAULTSHIM_CONTROL; unset,
 * missing or malformed: every offset is 0), holds offsets the test may change while the
 * process runs (tests/faults/shim.py ClockControl writes it in place):
 *   CLOCK_REALTIME, _COARSE, _ALARM, CLOCK_TAI, gettimeofday, time, timespec_get:
 *       + realtime offset (a skewed wall clock)
 *   CLOCK_BOOTTIME, CLOCK_BOOTTIME_ALARM:
 *       + boottime offset (time the host "spent suspended": BOOTTIME advances during a
 *       suspend, MONOTONIC does not)
 *   CLOCK_MONOTONIC (and _RAW, _COARSE, CPU clocks) are never shifted: shifting them, as
 *   libfaketime does, breaks the timed waits of Python and gRPC, which use MONOTONIC.
 *
 * Exec failure. If CONCH_FAULTSHIM_FAIL_EXEC is a non-empty string, execve, execv, execvp,
 * execvpe, fexecve, execl, execlp, execle (errno set, -1 returned) and posix_spawn,
 * posix_spawnp (error returned) fail without executing anything when an element of argv
 * contains that substring. The error is EAGAIN, or the number in
 * CONCH_FAULTSHIM_FAIL_EXEC_ERRNO. CPython's _posixsubprocess calls execve/execv from a
 * vfork()ed child (sharing the parent's memory): so everything is read and resolved in the
 * constructor, and the exec wrappers only compare strings and call through a pointer.
 *
 * Stop after a spawn. If CONCH_FAULTSHIM_STOP_AFTER_SPAWN is a non-empty string, a
 * posix_spawn or posix_spawnp that started a child whose argv has an element containing it
 * then stops the calling process (raise(SIGSTOP): every thread stops, the caller before it
 * returns): the process is frozen in the instant after the spawn, for the test to kill or
 * continue (conch and conchd spawn a command's process with posix_spawn, then arm its
 * watchdog).
 *
 * Limits: only calls through the dynamic linker are seen. Statically linked programs, Go
 * programs (etcd, etcdctl: raw syscalls and the vDSO), direct syscall(2)s and glibc-internal
 * calls (system() and popen() spawn via an internal posix_spawn) are not affected. Absolute
 * waits on CLOCK_REALTIME deadlines (pthread_cond_timedwait with the default clock,
 * sem_timedwait, clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME)) are not translated: a
 * deadline computed from the skewed clock waits `offset` too long or too short.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The control file (native byte order; keep in sync with shim.py _LAYOUT). */
#define FAULTSHIM_MAGIC "CONCHFS1"
struct faultshim_control {
    char magic[8];
    uint64_t seq;        /* seqlock: odd while the writer updates the offsets */
    int64_t realtime_ns; /* added to the realtime clocks */
    int64_t boottime_ns; /* added to CLOCK_BOOTTIME */
};

static const struct faultshim_control *control; /* NULL: all offsets 0 */

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static int (*real_gettimeofday)(struct timeval *, void *);
static int (*real_execve)(const char *, char *const[], char *const[]);
static int (*real_execv)(const char *, char *const[]);
static int (*real_execvp)(const char *, char *const[]);
static int (*real_execvpe)(const char *, char *const[], char *const[]);
static int (*real_fexecve)(int, char *const[], char *const[]);
static int (*real_posix_spawn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                               const posix_spawnattr_t *, char *const[], char *const[]);
static int (*real_posix_spawnp)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                                const posix_spawnattr_t *, char *const[], char *const[]);

#define FAIL_EXEC_MAX 4096
static char fail_exec[FAIL_EXEC_MAX];        /* empty: exec failure off */
static int fail_errno = EAGAIN;
static char stop_after_spawn[FAIL_EXEC_MAX]; /* empty: stop after spawn off */

static void resolve(void) {
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    real_gettimeofday = dlsym(RTLD_NEXT, "gettimeofday");
    real_execve = dlsym(RTLD_NEXT, "execve");
    real_execv = dlsym(RTLD_NEXT, "execv");
    real_execvp = dlsym(RTLD_NEXT, "execvp");
    real_execvpe = dlsym(RTLD_NEXT, "execvpe");
    real_fexecve = dlsym(RTLD_NEXT, "fexecve");
    real_posix_spawn = dlsym(RTLD_NEXT, "posix_spawn");
    real_posix_spawnp = dlsym(RTLD_NEXT, "posix_spawnp");
}

static void load_control(void) {
    const char *path = getenv("CONCH_FAULTSHIM_CONTROL");
    if (path == NULL || *path == '\0')
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size >= (off_t)sizeof(struct faultshim_control)) {
        void *p = mmap(NULL, sizeof(struct faultshim_control), PROT_READ, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) {
            const struct faultshim_control *c = p;
            int ok = 1;
            for (int i = 0; i < 8; i++)
                ok &= c->magic[i] == FAULTSHIM_MAGIC[i];
            if (ok)
                control = c;
            else
                munmap(p, sizeof(struct faultshim_control));
        }
    }
    close(fd);
}

/* Copy environment variable `name` into `buf` (FAIL_EXEC_MAX bytes); unset or too long to
 * match exactly: empty (rather match nothing than too much). */
static void load_pattern(const char *name, char *buf) {
    const char *s = getenv(name);
    size_t n = 0;
    if (s == NULL)
        return;
    while (s[n] != '\0' && n < FAIL_EXEC_MAX - 1) {
        buf[n] = s[n];
        n++;
    }
    if (s[n] != '\0')
        n = 0;
    buf[n] = '\0';
}

static void load_fail_exec(void) {
    load_pattern("CONCH_FAULTSHIM_FAIL_EXEC", fail_exec);
    load_pattern("CONCH_FAULTSHIM_STOP_AFTER_SPAWN", stop_after_spawn);
    const char *e = getenv("CONCH_FAULTSHIM_FAIL_EXEC_ERRNO");
    if (e != NULL && *e != '\0') {
        char *end;
        long v = strtol(e, &end, 10);
        if (*end == '\0' && v > 0 && v < 4096)
            fail_errno = (int)v;
    }
}

__attribute__((constructor)) static void faultshim_init(void) {
    resolve();
    load_control();
    load_fail_exec();
}

/* -- clocks ------------------------------------------------------------------------------ */

static void read_offsets(int64_t *realtime_ns, int64_t *boottime_ns) {
    const struct faultshim_control *c = control;
    *realtime_ns = *boottime_ns = 0;
    if (c == NULL)
        return;
    for (int tries = 0;; tries++) {
        uint64_t s1 = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
        int64_t r = __atomic_load_n(&c->realtime_ns, __ATOMIC_RELAXED);
        int64_t b = __atomic_load_n(&c->boottime_ns, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        uint64_t s2 = __atomic_load_n(&c->seq, __ATOMIC_RELAXED);
        /* A writer that died mid-update must not hang us: give up waiting after a while. */
        if ((s1 == s2 && (s1 & 1) == 0) || tries > 100000) {
            *realtime_ns = r;
            *boottime_ns = b;
            return;
        }
    }
}

static void add_ns(struct timespec *ts, int64_t ns) {
    int64_t sec = ns / 1000000000, nsec = ts->tv_nsec + ns % 1000000000;
    if (nsec >= 1000000000) {
        nsec -= 1000000000;
        sec++;
    } else if (nsec < 0) {
        nsec += 1000000000;
        sec--;
    }
    ts->tv_sec += sec;
    ts->tv_nsec = nsec;
}

static int64_t offset_for(clockid_t id) {
    int64_t realtime_ns, boottime_ns;
    switch (id) {
    case CLOCK_REALTIME:
    case CLOCK_REALTIME_COARSE:
    case CLOCK_REALTIME_ALARM:
    case CLOCK_TAI:
        read_offsets(&realtime_ns, &boottime_ns);
        return realtime_ns;
    case CLOCK_BOOTTIME:
    case CLOCK_BOOTTIME_ALARM:
        read_offsets(&realtime_ns, &boottime_ns);
        return boottime_ns;
    default:
        return 0;
    }
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (real_clock_gettime == NULL) /* called by another library's constructor before ours */
        resolve();
    int rc = real_clock_gettime(id, ts);
    if (rc == 0) {
        int64_t off = offset_for(id);
        if (off != 0)
            add_ns(ts, off);
    }
    return rc;
}

#pragma GCC diagnostic ignored "-Wnonnull-compare" /* glibc says tv is never NULL; be safe */
int gettimeofday(struct timeval *tv, void *tz) {
    if (real_gettimeofday == NULL)
        resolve();
    int rc = real_gettimeofday(tv, tz);
    if (rc == 0 && tv != NULL) {
        int64_t off = offset_for(CLOCK_REALTIME);
        if (off != 0) {
            struct timespec ts = {tv->tv_sec, (long)tv->tv_usec * 1000};
            add_ns(&ts, off);
            tv->tv_sec = ts.tv_sec;
            tv->tv_usec = ts.tv_nsec / 1000;
        }
    }
    return rc;
}

time_t time(time_t *t) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    if (t != NULL)
        *t = ts.tv_sec;
    return ts.tv_sec;
}

int timespec_get(struct timespec *ts, int base) {
    if (base != TIME_UTC || clock_gettime(CLOCK_REALTIME, ts) != 0)
        return 0;
    return base;
}

/* -- exec failure (async-signal-safe: no malloc, no getenv, no locks) ---------------------- */

static int contains(const char *hay, const char *needle) {
    for (; *hay != '\0'; hay++) {
        const char *h = hay, *n = needle;
        while (*n != '\0' && *h == *n) {
            h++;
            n++;
        }
        if (*n == '\0')
            return 1;
    }
    return 0;
}

static int argv_has(char *const argv[], const char *pattern) {
    if (pattern[0] == '\0' || argv == NULL)
        return 0;
    for (size_t i = 0; argv[i] != NULL; i++)
        if (contains(argv[i], pattern))
            return 1;
    return 0;
}

static int must_fail(char *const argv[]) {
    return argv_has(argv, fail_exec);
}

/* A spawn that started a child (rc 0) whose argv matches: freeze the caller right here.
 * raise() signals the calling thread, which then stops before it returns to user code; a
 * kill() of the process could be taken by another thread, letting this one run on a while. */
static int stop_if_wanted(int rc, char *const argv[]) {
    if (rc == 0 && argv_has(argv, stop_after_spawn))
        raise(SIGSTOP);
    return rc;
}

#define FAIL_OR_CALL(real, ...)                                                                \
    do {                                                                                       \
        if (must_fail(argv) || (real) == NULL) {                                               \
            errno = (real) == NULL ? ENOSYS : fail_errno;                                      \
            return -1;                                                                         \
        }                                                                                      \
        return (real)(__VA_ARGS__);                                                            \
    } while (0)

int execve(const char *path, char *const argv[], char *const envp[]) {
    FAIL_OR_CALL(real_execve, path, argv, envp);
}

int execv(const char *path, char *const argv[]) {
    FAIL_OR_CALL(real_execv, path, argv);
}

int execvp(const char *file, char *const argv[]) {
    FAIL_OR_CALL(real_execvp, file, argv);
}

int execvpe(const char *file, char *const argv[], char *const envp[]) {
    FAIL_OR_CALL(real_execvpe, file, argv, envp);
}

int fexecve(int fd, char *const argv[], char *const envp[]) {
    FAIL_OR_CALL(real_fexecve, fd, argv, envp);
}

/* execl*: glibc's own call __execve internally, out of our reach, so rebuild argv here. */
#define COLLECT_ARGV(first, ap, argv)                                                          \
    size_t argc_ = 1;                                                                          \
    va_start(ap, first);                                                                       \
    while (va_arg(ap, char *) != NULL)                                                         \
        argc_++;                                                                               \
    va_end(ap);                                                                                \
    char *argv[argc_ + 1];                                                                     \
    argv[0] = (char *)(first);                                                                 \
    va_start(ap, first);                                                                       \
    for (size_t i_ = 1; i_ <= argc_; i_++)                                                     \
        argv[i_] = va_arg(ap, char *);

int execl(const char *path, const char *arg, ...) {
    va_list ap;
    COLLECT_ARGV(arg, ap, argv);
    va_end(ap);
    FAIL_OR_CALL(real_execv, path, argv);
}

int execlp(const char *file, const char *arg, ...) {
    va_list ap;
    COLLECT_ARGV(arg, ap, argv);
    va_end(ap);
    FAIL_OR_CALL(real_execvp, file, argv);
}

int execle(const char *path, const char *arg, ...) {
    va_list ap;
    COLLECT_ARGV(arg, ap, argv);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    FAIL_OR_CALL(real_execve, path, argv, envp);
}

int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    if (must_fail(argv))
        return fail_errno;
    if (real_posix_spawn == NULL)
        return ENOSYS;
    return stop_if_wanted(real_posix_spawn(pid, path, actions, attr, argv, envp), argv);
}

int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    if (must_fail(argv))
        return fail_errno;
    if (real_posix_spawnp == NULL)
        return ENOSYS;
    return stop_if_wanted(real_posix_spawnp(pid, file, actions, attr, argv, envp), argv);
}
