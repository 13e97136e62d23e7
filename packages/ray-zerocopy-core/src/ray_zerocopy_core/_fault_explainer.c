/* ray-zerocopy's SIGSEGV explainer: names the cause when a write hits read-only weights.
 *
 * Runs in the faulting thread without Python: no GIL, no allocation, only
 * async-signal-safe calls (write, sigaction, raise). Python registers the protected
 * address ranges; a fault inside one writes the message once. Then the previous
 * handler is put back: a real fault re-runs the faulting instruction into it, and a
 * SIGSEGV sent with kill() is raised again for it, so every SIGSEGV ends as it
 * would have without this file.
 *
 * Built into the package when its wheel is built (hatch_build.py) and loaded with ctypes
 * by fault_explainer.py, which calls rzc_abi_version() first: a library whose answer is
 * not the number that module expects is not used.
 */
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* Raise with any change to the functions below; fault_explainer.ABI_VERSION must match. */
#ifndef RZC_ABI_VERSION
#define RZC_ABI_VERSION 1
#endif
#define RZC_MAX_RANGES 4096
#define RZC_MAX_MESSAGE 2048

static volatile uintptr_t range_start[RZC_MAX_RANGES];
static volatile uintptr_t range_end[RZC_MAX_RANGES];
static char message[RZC_MAX_MESSAGE];
static size_t message_length;
static struct sigaction previous;
static volatile sig_atomic_t installed;
static volatile int explained;

static int protected_address(uintptr_t address) {
    for (int i = 0; i < RZC_MAX_RANGES; i++) {
        uintptr_t start = range_start[i];
        if (start != 0 && start <= address && address < range_end[i]) return 1;
    }
    return 0;
}

static void explain(int signum, siginfo_t *info, void *context) {
    (void)context;
    int from_fault = info != NULL && info->si_code > 0; /* SI_USER is 0, SI_TKILL and SI_QUEUE < 0 */
    if (from_fault && protected_address((uintptr_t)info->si_addr) && !__sync_lock_test_and_set(&explained, 1)) {
        ssize_t ignored = write(2, message, message_length);
        (void)ignored;
    }
    sigaction(SIGSEGV, &previous, NULL);
    if (!from_fault) raise(signum); /* delivered to the previous handler once this one returns */
}

/* The interface this library implements (see RZC_ABI_VERSION). */
int rzc_abi_version(void) { return RZC_ABI_VERSION; }

/* Install once; returns 0 on success (or if already installed), -1 if sigaction failed. */
int rzc_install(const char *text) {
    if (installed) return 0;
    size_t length = strlen(text);
    if (length >= RZC_MAX_MESSAGE) length = RZC_MAX_MESSAGE - 1;
    memcpy(message, text, length);
    message_length = length;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = explain;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    struct sigaction before;
    if (sigaction(SIGSEGV, &action, &before) != 0) return -1;
    if (before.sa_sigaction == explain) { /* never hand back to ourselves: that would loop */
        memset(&before, 0, sizeof before);
        before.sa_handler = SIG_DFL;
    }
    previous = before;
    installed = 1;
    return 0;
}

/* Record [start, end) as protected; returns 0, or -1 when the table is full. */
int rzc_add_range(uintptr_t start, uintptr_t end) {
    for (int i = 0; i < RZC_MAX_RANGES; i++) {
        if (range_start[i] == 0) {
            range_end[i] = end;
            range_start[i] = start; /* set last: a reader sees a whole range or none */
            return 0;
        }
    }
    return -1;
}

void rzc_remove_range(uintptr_t start) {
    for (int i = 0; i < RZC_MAX_RANGES; i++) {
        if (range_start[i] == start) {
            range_start[i] = 0;
            range_end[i] = 0;
            return;
        }
    }
}
