using System.Runtime.InteropServices;

namespace Rbs.Agent.Execution;

/// <summary>
/// libc calls the agent needs that .NET's Process does not offer: a new process group for the tool (so the
/// whole tree can be signalled, like a terminal's Ctrl-C), the raw wait status (Process.ExitCode folds death by
/// signal into 128+n and loses the signal), and realpath for workspace confinement.
/// </summary>
internal static unsafe partial class Native
{
    public const int SIGINT = 2;
    public const int SIGKILL = 9;
    public const int SIGTERM = 15;
    public const int SIGSTOP = 19;

    public const int ESRCH = 3;
    public const int EINTR = 4;

    public const int O_CLOEXEC = 0x80000;

    public const short POSIX_SPAWN_SETPGROUP = 0x02;
    public const short POSIX_SPAWN_SETSIGDEF = 0x04;
    public const short POSIX_SPAWN_SETSIGMASK = 0x08;

    // glibc's posix_spawnattr_t is 336 bytes, posix_spawn_file_actions_t 80, sigset_t 128 (x86_64/arm64);
    // allocate generously so a different layout can never overflow.
    public const int OpaqueStructSize = 1024;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int kill(int pid, int sig);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int waitpid(int pid, int* status, int options);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int pipe2(int* fds, int flags);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);

    public const int F_DUPFD_CLOEXEC = 1030;

    [LibraryImport("libc", SetLastError = true)]
    public static partial int fcntl(int fd, int cmd, int arg);

    [LibraryImport("libc")]
    public static partial int posix_spawn(int* pid, byte* path, void* fileActions, void* attr, byte** argv, byte** envp);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_init(void* fileActions);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_destroy(void* fileActions);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_adddup2(void* fileActions, int fd, int newFd);

    [LibraryImport("libc")]
    public static partial int posix_spawn_file_actions_addchdir_np(void* fileActions, byte* path);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_init(void* attr);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_destroy(void* attr);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_setflags(void* attr, short flags);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_setpgroup(void* attr, int pgroup);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_setsigdefault(void* attr, void* sigset);

    [LibraryImport("libc")]
    public static partial int posix_spawnattr_setsigmask(void* attr, void* sigset);

    [LibraryImport("libc")]
    public static partial int sigemptyset(void* sigset);

    [LibraryImport("libc")]
    public static partial int sigfillset(void* sigset);

    [LibraryImport("libc")]
    public static partial int sigdelset(void* sigset, int signo);

    [LibraryImport("libc", SetLastError = true)]
    public static partial byte* realpath(byte* path, byte* resolved);

    [LibraryImport("libc")]
    public static partial void free(void* ptr);

    /// <summary>The canonical absolute path (symlinks resolved), or null when it does not exist.</summary>
    public static string? RealPath(string path)
    {
        var utf8 = Marshal.StringToCoTaskMemUTF8(path);
        try
        {
            var resolved = realpath((byte*)utf8, null);
            if (resolved is null)
            {
                return null;
            }

            try
            {
                return Marshal.PtrToStringUTF8((nint)resolved);
            }
            finally
            {
                free(resolved);
            }
        }
        finally
        {
            Marshal.FreeCoTaskMem(utf8);
        }
    }
}
