#ifndef RV_FS_H
#define RV_FS_H
/* Small filesystem helpers shared by the commands. */
#include <sys/types.h>

/* Creates path and any missing parent (parents with mode 0755, path itself
 * with mode); an existing directory is fine. Returns 0, or -1 with errno set
 * (a path longer than PATH_MAX: ENAMETOOLONG). Thread: any. */
int rv_mkdir_p(const char *path, mode_t mode);

#endif
