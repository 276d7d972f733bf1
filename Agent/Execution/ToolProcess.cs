using System.ComponentModel;
using System.IO.Pipes;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Rbs.Shared.Text;

namespace Rbs.Agent.Execution;

/// <summary>How the tool ended: <see cref="Code"/> is its exit code, or 128 + <see cref="Signal"/> when a signal killed it.</summary>
internal readonly record struct ToolExit(int Code, int Signal);

/// <summary>The tool's terminal: a pseudo-terminal of this size as its controlling terminal and stderr, and as stdin/stdout when asked.</summary>
internal sealed record ToolTerminal(int Columns, int Rows, bool StdinOnTerminal, bool StdoutOnTerminal);

/// <summary>What to start, and how.</summary>
/// <param name="Path">The executable.</param>
/// <param name="Argv0">argv[0] (bazel's wrapper only reads its own name from it).</param>
internal sealed record ToolStartInfo(
    string Path,
    string Argv0,
    IReadOnlyList<string> Arguments,
    string WorkingDirectory,
    IReadOnlyDictionary<string, string> Environment)
{
    /// <summary>Null: pipes for stdin, stdout and stderr, and a process group of its own. Set: a new session on a pseudo-terminal.</summary>
    public ToolTerminal? Terminal { get; init; }

    /// <summary>
    /// The tool gets SIGTERM when the agent dies, however it dies (PR_SET_PDEATHSIG, through util-linux
    /// <c>setpriv --pdeathsig</c>). bazel's client treats SIGTERM as Ctrl-C: it cancels the command on its server,
    /// which stops the running actions, and exits.
    /// </summary>
    public bool DiesWithAgent { get; init; }
}

/// <summary>
/// The build tool's process, started with posix_spawn in a process group (pipes) or session (pseudo-terminal) of its
/// own, with default signal dispositions.
/// Not System.Diagnostics.Process: that API can neither create a process group (needed to signal the tool and
/// everything it started, as a terminal's Ctrl-C does, and to kill orphans after the leader died), nor give it a
/// controlling terminal, nor report whether the tool exited with 130 or died of SIGINT.
/// </summary>
internal sealed unsafe class ToolProcess : IDisposable
{
    /// <summary>The signal setpriv arranges for the tool when the agent dies (see <see cref="ToolStartInfo.DiesWithAgent"/>).</summary>
    public const string ParentDeathSignal = "TERM";

    /// <summary>
    /// The kernel buffer of the stdout and stderr pipes: 1 MiB (Linux's default pipe-max-size) instead of 64 KiB, so
    /// the tool keeps writing while the agent sends what it read before. Best effort: above the system's limits the
    /// pipe keeps its default size.
    /// </summary>
    public const int OutputPipeSize = 1024 * 1024;

    private static readonly Lazy<string?> s_setpriv = new(() => FindOnPath("setpriv", ["/usr/bin", "/bin"]));

    private readonly TaskCompletionSource<ToolExit> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _exitedCts = new();

    private ToolProcess(int pid, Stream? stdin, AnonymousPipeClientStream? stdout, AnonymousPipeClientStream? stderr, Pseudoterminal? terminal)
    {
        Pid = pid;
        StandardInput = stdin;
        StandardOutput = stdout;
        StandardError = stderr;
        Terminal = terminal;
        var waiter = new Thread(WaitForExit) { IsBackground = true, Name = $"rbs-agent waitpid {pid}" };
        waiter.Start();
    }

    /// <summary>The tool's pid, which is also its process group id (and session id with a terminal).</summary>
    public int Pid { get; }

    /// <summary>The stdin pipe; null when stdin is the terminal.</summary>
    public Stream? StandardInput { get; }

    /// <summary>The stdout pipe; null when stdout is the terminal.</summary>
    public AnonymousPipeClientStream? StandardOutput { get; }

    /// <summary>The stderr pipe; null when stderr is the terminal.</summary>
    public AnonymousPipeClientStream? StandardError { get; }

    /// <summary>The master side of the tool's terminal; null when it runs on pipes.</summary>
    public Pseudoterminal? Terminal { get; }

    /// <summary>Completes once the tool has exited and been reaped.</summary>
    public Task<ToolExit> Exited => _exited.Task;

    /// <summary>Cancelled once the tool has exited (aborts blocked stdin writes).</summary>
    public CancellationToken ExitedToken => _exitedCts.Token;

    public bool HasExited => _exited.Task.IsCompleted;

    /// <summary>The util-linux setpriv that makes a tool die with the agent, or null when this system has none.</summary>
    public static string? ParentDeathWrapper => s_setpriv.Value;

    /// <summary>
    /// Starts the tool with the given arguments verbatim; no shell. The spawn runs on one long-lived thread: the
    /// kernel sends the parent-death signal when the spawning <em>thread</em> exits, so a thread-pool thread that
    /// retires later would kill a healthy command.
    /// </summary>
    /// <exception cref="Win32Exception">posix_spawn failed (e.g. the tool is not executable), or no pseudo-terminal could be opened.</exception>
    public static Task<ToolProcess> StartAsync(ToolStartInfo info) => SpawnThread.RunAsync(() => Start(info));

    private static ToolProcess Start(ToolStartInfo info)
    {
        var terminal = info.Terminal is { } size ? Pseudoterminal.Open(size.Columns, size.Rows) : null;
        try
        {
            var process = Spawn(info, terminal);
            // The tool holds its own copies now; the master reads EOF once the last of them is closed.
            terminal?.CloseSlave();
            return process;
        }
        catch
        {
            terminal?.Dispose();
            throw;
        }
    }

    private static ToolProcess Spawn(ToolStartInfo info, Pseudoterminal? terminal)
    {
        var allocations = new List<nint>();
        var fds = stackalloc int[6] { -1, -1, -1, -1, -1, -1 };
        var fileActions = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var attr = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var sigDefault = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var sigMask = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var ignoreAction = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var savedAction = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var fileActionsReady = false;
        var attrReady = false;
        var stdinPiped = info.Terminal is not { StdinOnTerminal: true };
        var stdoutPiped = info.Terminal is not { StdoutOnTerminal: true };
        var stderrPiped = terminal is null;
        try
        {
            // All pipe ends are close-on-exec; posix_spawn's dup2 onto 0/1/2 clears the flag for the child's copies only.
            // fds: [0]=stdin read (child) [1]=stdin write (agent) [2]=stdout read (agent) [3]=stdout write (child) ...
            ReadOnlySpan<bool> piped = [stdinPiped, stdoutPiped, stderrPiped];
            for (var i = 0; i < 3; i++)
            {
                if (piped[i] && Native.pipe2(fds + (2 * i), Native.O_CLOEXEC) != 0)
                {
                    throw new Win32Exception(Marshal.GetLastPInvokeError(), "pipe2 failed");
                }

                if (piped[i] && i > 0)
                {
                    // Best effort (see OutputPipeSize): a pipe that cannot grow works as before.
                    _ = Native.fcntl(fds[2 * i], Native.F_SETPIPE_SZ, OutputPipeSize);
                }
            }

            // If the agent itself was started with 0/1/2 closed, a child end could land on 0..2, where dup2 onto
            // itself keeps close-on-exec and a later dup2 could overwrite it: move child ends above 2 first.
            foreach (var i in (ReadOnlySpan<int>)[0, 3, 5])
            {
                if (fds[i] is >= 0 and < 3)
                {
                    var moved = Native.fcntl(fds[i], Native.F_DUPFD_CLOEXEC, 3);
                    if (moved < 0)
                    {
                        throw new Win32Exception(Marshal.GetLastPInvokeError(), "fcntl(F_DUPFD_CLOEXEC) failed");
                    }

                    Native.close(fds[i]);
                    fds[i] = moved;
                }
            }

            Check(Native.posix_spawn_file_actions_init(fileActions), "posix_spawn_file_actions_init");
            fileActionsReady = true;
            if (stdinPiped)
            {
                Check(Native.posix_spawn_file_actions_adddup2(fileActions, fds[0], 0), "adddup2 stdin");
            }

            if (stdoutPiped)
            {
                Check(Native.posix_spawn_file_actions_adddup2(fileActions, fds[3], 1), "adddup2 stdout");
            }

            if (terminal is null)
            {
                Check(Native.posix_spawn_file_actions_adddup2(fileActions, fds[5], 2), "adddup2 stderr");
            }
            else
            {
                // File actions run after setsid: the new session's leader opening a terminal without O_NOCTTY makes
                // it its controlling terminal (Linux), so /dev/tty, job-control signals and SIGWINCH work as locally.
                Check(Native.posix_spawn_file_actions_addopen(fileActions, 2, Utf8(terminal.SlavePath, allocations), Native.O_RDWR, 0), "addopen terminal");
                if (!stdoutPiped)
                {
                    Check(Native.posix_spawn_file_actions_adddup2(fileActions, 2, 1), "adddup2 terminal stdout");
                }

                if (!stdinPiped)
                {
                    Check(Native.posix_spawn_file_actions_adddup2(fileActions, 2, 0), "adddup2 terminal stdin");
                }
            }

            Check(Native.posix_spawn_file_actions_addchdir_np(fileActions, Utf8(info.WorkingDirectory, allocations)), "addchdir");

            Check(Native.posix_spawnattr_init(attr), "posix_spawnattr_init");
            attrReady = true;
            // The runtime ignores SIGPIPE and installs its own handlers; the tool must start with defaults and no mask.
            _ = Native.sigfillset(sigDefault);
            _ = Native.sigdelset(sigDefault, Native.SIGKILL);
            _ = Native.sigdelset(sigDefault, Native.SIGSTOP);
            if (terminal is not null)
            {
                // Except SIGHUP on a terminal, which starts ignored (see below).
                _ = Native.sigdelset(sigDefault, Native.SIGHUP);
            }

            _ = Native.sigemptyset(sigMask);
            Check(Native.posix_spawnattr_setsigdefault(attr, sigDefault), "setsigdefault");
            Check(Native.posix_spawnattr_setsigmask(attr, sigMask), "setsigmask");
            short flags = Native.POSIX_SPAWN_SETSIGDEF | Native.POSIX_SPAWN_SETSIGMASK;
            if (terminal is null)
            {
                Check(Native.posix_spawnattr_setpgroup(attr, 0), "setpgroup");
                flags |= Native.POSIX_SPAWN_SETPGROUP;
            }
            else
            {
                // A session leader is its own group leader already (setpgid would fail with EPERM).
                flags |= Native.POSIX_SPAWN_SETSID;
            }

            Check(Native.posix_spawnattr_setflags(attr, flags), "setflags");

            string program;
            string[] argv;
            if (info.DiesWithAgent && ParentDeathWrapper is { } setpriv)
            {
                // setpriv sets PR_SET_PDEATHSIG and execs the tool in the same process; the setting survives exec.
                program = setpriv;
                argv = ["setpriv", "--pdeathsig", ParentDeathSignal, "--", info.Path, .. info.Arguments];
            }
            else
            {
                program = info.Path;
                argv = [info.Argv0, .. info.Arguments];
            }

            var argvPointers = StringArray(argv, allocations);
            var envp = StringArray([.. info.Environment.Select(kv => $"{kv.Key}={kv.Value}")], allocations);

            // On a terminal the tool starts with SIGHUP ignored. When the agent dies the kernel closes the master,
            // which hangs up the terminal and SIGHUPs the session leader, racing the parent-death SIGTERM: bazel's
            // client dies of SIGHUP without cancelling its command, and the server runs the actions on. An ignored
            // SIGHUP leaves the SIGTERM, which bazel handles like Ctrl-C. posix_spawn passes on only an ignored
            // disposition, so the agent ignores SIGHUP for the moment of the spawn (only this thread spawns).
            var swapped = false;
            if (terminal is not null)
            {
                *(nint*)ignoreAction = Native.SIG_IGN;
                swapped = Native.sigaction(Native.SIGHUP, ignoreAction, savedAction) == 0;
            }

            int pid;
            int rc;
            try
            {
                rc = Native.posix_spawn(&pid, Utf8(program, allocations), fileActions, attr, argvPointers, envp);
            }
            finally
            {
                if (swapped)
                {
                    _ = Native.sigaction(Native.SIGHUP, savedAction, null);
                }
            }

            if (rc != 0)
            {
                throw new Win32Exception(rc, $"could not start '{info.Path}' in '{info.WorkingDirectory}': {new Win32Exception(rc).Message}");
            }

            // The child has its copies; close ours so EOF on stdout/stderr means every writer is gone.
            foreach (var i in (ReadOnlySpan<int>)[0, 3, 5])
            {
                if (fds[i] >= 0)
                {
                    Native.close(fds[i]);
                    fds[i] = -1;
                }
            }

            var stdin = TakePipe(ref fds[1], PipeDirection.Out);
            var stdout = TakePipe(ref fds[2], PipeDirection.In);
            var stderr = TakePipe(ref fds[4], PipeDirection.In);
            return new ToolProcess(pid, stdin, stdout, stderr, terminal);
        }
        finally
        {
            for (var i = 0; i < 6; i++)
            {
                if (fds[i] >= 0)
                {
                    Native.close(fds[i]);
                }
            }

            if (fileActionsReady)
            {
                _ = Native.posix_spawn_file_actions_destroy(fileActions);
            }

            if (attrReady)
            {
                _ = Native.posix_spawnattr_destroy(attr);
            }

            NativeMemory.Free(fileActions);
            NativeMemory.Free(attr);
            NativeMemory.Free(sigDefault);
            NativeMemory.Free(sigMask);
            NativeMemory.Free(ignoreAction);
            NativeMemory.Free(savedAction);
            foreach (var p in allocations)
            {
                NativeMemory.Free((void*)p);
            }
        }
    }

    /// <summary>Sends <paramref name="signal"/> to the tool's process group. False when the group has no members left.</summary>
    public bool SignalGroup(int signal) => Native.kill(-Pid, signal) == 0;

    /// <summary>
    /// SIGKILL for the tool, every descendant (also those that left the group, found through /proc while the tool
    /// is still alive to be their parent) and whatever is left in its process group.
    /// </summary>
    /// <returns>How many processes were signalled.</returns>
    public int KillTree()
    {
        var killed = 0;
        if (!HasExited)
        {
            foreach (var pid in ProcessTree.Descendants(Pid))
            {
                if (Native.kill(pid, Native.SIGKILL) == 0)
                {
                    killed++;
                }
            }
        }

        if (SignalGroup(Native.SIGKILL))
        {
            killed++;
        }

        return killed;
    }

    public void Dispose()
    {
        StandardInput?.Dispose();
        StandardOutput?.Dispose();
        StandardError?.Dispose();
        Terminal?.Dispose();
        // _exitedCts is not disposed: the waitpid thread cancels it after completing Exited, whose continuations may
        // dispose this process first (a disposed source throws from Cancel, on a thread with no one to catch it, which
        // ends the agent). A source without a timer holds nothing that needs disposing.
    }

    private void WaitForExit()
    {
        int status;
        while (true)
        {
            var rc = Native.waitpid(Pid, &status, 0);
            if (rc == Pid)
            {
                break;
            }

            var errno = Marshal.GetLastPInvokeError();
            if (rc == -1 && errno == Native.EINTR)
            {
                continue;
            }

            _exited.TrySetException(new Win32Exception(errno, $"waitpid({Pid}) failed"));
            _exitedCts.Cancel();
            return;
        }

        // WIFEXITED: low 7 bits zero, code in bits 8..15; WIFSIGNALED: low 7 bits are the signal.
        var termSignal = status & 0x7f;
        var exit = termSignal == 0
            ? new ToolExit((status >> 8) & 0xff, 0)
            : new ToolExit(128 + termSignal, termSignal);
        _exited.TrySetResult(exit);
        _exitedCts.Cancel();
    }

    private static AnonymousPipeClientStream? TakePipe(ref int fd, PipeDirection direction)
    {
        if (fd < 0)
        {
            return null;
        }

        var stream = new AnonymousPipeClientStream(direction, new SafePipeHandle(fd, ownsHandle: true));
        fd = -1;
        return stream;
    }

    private static string? FindOnPath(string name, IEnumerable<string> fallbackDirectories)
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        foreach (var directory in path.Split(':', StringSplitOptions.RemoveEmptyEntries).Concat(fallbackDirectories))
        {
            var candidate = System.IO.Path.Combine(directory, name);
            if (System.IO.Path.IsPathRooted(candidate) && File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    private static void Check(int rc, string what)
    {
        if (rc != 0)
        {
            throw new Win32Exception(rc, $"{what} failed");
        }
    }

    private static byte* Utf8(string value, List<nint> allocations)
    {
        if (value.Contains('\0', StringComparison.Ordinal))
        {
            throw new ArgumentException("Strings passed to the tool cannot contain NUL characters.", nameof(value));
        }

        // UTF-8, except the bytes of an argument that was not UTF-8, which go out exactly as the client sent them.
        var bytes = ArgumentBytes.Encode(value);
        var buffer = (byte*)NativeMemory.Alloc((nuint)bytes.Length + 1);
        allocations.Add((nint)buffer);
        bytes.CopyTo(new Span<byte>(buffer, bytes.Length));
        buffer[bytes.Length] = 0;
        return buffer;
    }

    /// <summary>
    /// The one thread every tool is spawned from. It never exits while the agent runs, so the parent-death signal
    /// fires only when the agent itself dies.
    /// </summary>
    private static class SpawnThread
    {
        private static readonly System.Collections.Concurrent.BlockingCollection<Action> s_work = [];
        private static readonly Lazy<Thread> s_thread = new(() =>
        {
            var thread = new Thread(() =>
            {
                foreach (var work in s_work.GetConsumingEnumerable())
                {
                    work();
                }
            })
            {
                IsBackground = true,
                Name = "rbs-agent spawner",
            };
            thread.Start();
            return thread;
        });

        public static Task<T> RunAsync<T>(Func<T> spawn)
        {
            _ = s_thread.Value;
            var result = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
            s_work.Add(() =>
            {
                try
                {
                    result.SetResult(spawn());
                }
                catch (Exception ex)
                {
                    result.SetException(ex);
                }
            });
            return result.Task;
        }
    }

    private static byte** StringArray(IReadOnlyList<string> values, List<nint> allocations)
    {
        var array = (byte**)NativeMemory.Alloc((nuint)(values.Count + 1), (nuint)sizeof(byte*));
        allocations.Add((nint)array);
        for (var i = 0; i < values.Count; i++)
        {
            array[i] = Utf8(values[i], allocations);
        }

        array[values.Count] = null;
        return array;
    }
}
