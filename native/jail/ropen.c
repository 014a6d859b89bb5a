/*
 * corral-ropen.so: makes qemu open a template's RAM file read-only.
 *
 * A sandbox restored from a template maps the template's RAM file privately (copy-on-write,
 * `memory-backend-file,share=off`), so qemu never needs to write the file. Yet qemu 7.2
 * opens it O_RDWR all the same (its `readonly=on` would map guest RAM read-only too; 8.2's
 * `rom=off` separates the two). Preloaded into such a qemu (LD_PRELOAD) with the file's path
 * in CORRAL_RO_RAM, this turns that one open into O_RDONLY: a private writable mapping of a
 * read-only fd is what the kernel allows, and it is all qemu does with it. The jail binds the
 * file read-only, so a qemu taken over by its guest cannot open it for writing either, and
 * no clone can change the pages the other clones of the template map.
 *
 * Only an open of exactly that path, read-write, without O_CREAT or O_TRUNC, is changed;
 * every other call goes to libc as it was. Built for the host's glibc (qemu links it).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static const char *ro_path;
static openat_fn next_openat64;
static open_fn next_open64; /* set last: once it is there, so is the rest */

/*
 * Resolved on first use, not in a constructor: other libraries' constructors open files
 * before this one's would run. Two threads may both resolve; they store the same values.
 */
static void resolve(void) {
  if (__atomic_load_n(&next_open64, __ATOMIC_ACQUIRE)) return;
  ro_path = getenv("CORRAL_RO_RAM");
  next_openat64 = (openat_fn)dlsym(RTLD_NEXT, "openat64");
  __atomic_store_n(&next_open64, (open_fn)dlsym(RTLD_NEXT, "open64"), __ATOMIC_RELEASE);
}

/* Resolves the next functions, then gives the flags to open with. */
static int adjust(const char *path, int flags) {
  resolve();
  if (ro_path && path && (flags & O_ACCMODE) == O_RDWR && !(flags & (O_CREAT | O_TRUNC)) && !strcmp(path, ro_path))
    return (flags & ~O_ACCMODE) | O_RDONLY;
  return flags;
}

/* The mode argument is there only with O_CREAT or O_TMPFILE. */
#define MODE_ARG(flags)                                                                  \
  mode_t mode = 0;                                                                       \
  if (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE) {                       \
    va_list ap;                                                                          \
    va_start(ap, flags);                                                                 \
    mode = va_arg(ap, mode_t);                                                           \
    va_end(ap);                                                                          \
  }

int open64(const char *path, int flags, ...) {
  MODE_ARG(flags)
  int f = adjust(path, flags);
  return next_open64(path, f, mode);
}

int open(const char *path, int flags, ...) {
  MODE_ARG(flags)
  int f = adjust(path, flags);
  return next_open64(path, f, mode);
}

int openat64(int dir, const char *path, int flags, ...) {
  MODE_ARG(flags)
  int f = adjust(path, flags);
  return next_openat64(dir, path, f, mode);
}

int openat(int dir, const char *path, int flags, ...) {
  MODE_ARG(flags)
  int f = adjust(path, flags);
  return next_openat64(dir, path, f, mode);
}

/* _FORTIFY_SOURCE's forms of a two-argument open (qemu imports __open64_2). */
int __open64_2(const char *path, int flags) {
  int f = adjust(path, flags);
  return next_open64(path, f);
}

int __open_2(const char *path, int flags) {
  int f = adjust(path, flags);
  return next_open64(path, f);
}

int __openat64_2(int dir, const char *path, int flags) {
  int f = adjust(path, flags);
  return next_openat64(dir, path, f);
}

int __openat_2(int dir, const char *path, int flags) {
  int f = adjust(path, flags);
  return next_openat64(dir, path, f);
}
