#ifndef KITH_CLINUX_SHIM_H
#define KITH_CLINUX_SHIM_H
// Linux interfaces that Glibc's Swift module does not expose: epoll, eventfd, accept4.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

// glibc declares accept4 only under _GNU_SOURCE, which would change other headers' structs and
// clash with Swift's Glibc module; the symbol is always there.
extern int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);

/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC, no peer address.
static inline int kith_accept_nonblocking(int listener) {
    return accept4(listener, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
#endif
