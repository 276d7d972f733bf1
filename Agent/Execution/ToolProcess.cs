using System.ComponentModel;
using System.IO.Pipes;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Rbs.Agent.Execution;

/// <summary>How the tool ended: <see cref="Code"/> is its exit code, or 128 + <see cref="Signal"/> when a signal killed it.</summary>
internal readonly record struct ToolExit(int Code, int Signal);

/// <summary>
/// The build tool's process, started with posix_spawn in a process group of its own with piped stdio.
/// Not System.Diagnostics.Process: that API can neither create a process group (needed to signal the tool and
/// everything it started, as a terminal's Ctrl-C does, and to kill orphans after the leader died) nor report
/// whether the tool exited with 130 or died of SIGINT.
/// </summary>
internal sealed unsafe class ToolProcess : IDisposable
{
    private readonly TaskCompletionSource<ToolExit> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _exitedCts = new();

    private ToolProcess(int pid, Stream stdin, Stream stdout, Stream stderr)
    {
        Pid = pid;
        StandardInput = stdin;
        StandardOutput = stdout;
        StandardError = stderr;
        var waiter = new Thread(WaitForExit) { IsBackground = true, Name = $"rbs-agent waitpid {pid}" };
        waiter.Start();
    }

    /// <summary>The tool's pid, which is also its process group id.</summary>
    public int Pid { get; }

    public Stream StandardInput { get; }

    public Stream StandardOutput { get; }

    public Stream StandardError { get; }

    /// <summary>Completes once the tool has exited and been reaped.</summary>
    public Task<ToolExit> Exited => _exited.Task;

    /// <summary>Cancelled once the tool has exited (aborts blocked stdin writes).</summary>
    public CancellationToken ExitedToken => _exitedCts.Token;

    public bool HasExited => _exited.Task.IsCompleted;

    /// <summary>Starts <paramref name="path"/> with argv[0] = <paramref name="argv0"/> and the given arguments verbatim; no shell.</summary>
    /// <exception cref="Win32Exception">posix_spawn failed (e.g. the tool is not executable).</exception>
    public static ToolProcess Start(
        string path,
        string argv0,
        IReadOnlyList<string> arguments,
        string workingDirectory,
        IReadOnlyDictionary<string, string> environment)
    {
        var allocations = new List<nint>();
        var fds = stackalloc int[6] { -1, -1, -1, -1, -1, -1 };
        var fileActions = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var attr = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var sigDefault = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var sigMask = NativeMemory.AllocZeroed(Native.OpaqueStructSize);
        var fileActionsReady = false;
        var attrReady = false;
        try
        {
            // All pipe ends are close-on-exec; posix_spawn's dup2 onto 0/1/2 clears the flag for the child's copies only.
            for (var i = 0; i < 3; i++)
            {
                if (Native.pipe2(fds + (2 * i), Native.O_CLOEXEC) != 0)
                {
                    throw new Win32Exception(Marshal.GetLastPInvokeError(), "pipe2 failed");
                }
            }

            // fds: [0]=stdin read (child) [1]=stdin write (agent) [2]=stdout read (agent) [3]=stdout write (child) ...
            // If the agent itself was started with 0/1/2 closed, a child end could land on 0..2, where dup2 onto
            // itself keeps close-on-exec and a later dup2 could overwrite it: move child ends above 2 first.
            foreach (var i in (ReadOnlySpan<int>)[0, 3, 5])
            {
                if (fds[i] < 3)
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
            Check(Native.posix_spawn_file_actions_adddup2(fileActions, fds[0], 0), "adddup2 stdin");
            Check(Native.posix_spawn_file_actions_adddup2(fileActions, fds[3], 1), "adddup2 stdout");
            Check(Native.posix_spawn_file_actions_adddup2(fileActions, fds[5], 2), "adddup2 stderr");
            Check(Native.posix_spawn_file_actions_addchdir_np(fileActions, Utf8(workingDirectory, allocations)), "addchdir");

            Check(Native.posix_spawnattr_init(attr), "posix_spawnattr_init");
            attrReady = true;
            // The runtime ignores SIGPIPE and installs its own handlers; the tool must start with defaults and no mask.
            _ = Native.sigfillset(sigDefault);
            _ = Native.sigdelset(sigDefault, Native.SIGKILL);
            _ = Native.sigdelset(sigDefault, Native.SIGSTOP);
            _ = Native.sigemptyset(sigMask);
            Check(Native.posix_spawnattr_setsigdefault(attr, sigDefault), "setsigdefault");
            Check(Native.posix_spawnattr_setsigmask(attr, sigMask), "setsigmask");
            Check(Native.posix_spawnattr_setpgroup(attr, 0), "setpgroup");
            Check(
                Native.posix_spawnattr_setflags(
                    attr,
                    (short)(Native.POSIX_SPAWN_SETPGROUP | Native.POSIX_SPAWN_SETSIGDEF | Native.POSIX_SPAWN_SETSIGMASK)),
                "setflags");

            var argv = StringArray([argv0, .. arguments], allocations);
            var envp = StringArray([.. environment.Select(kv => $"{kv.Key}={kv.Value}")], allocations);

            int pid;
            var rc = Native.posix_spawn(&pid, Utf8(path, allocations), fileActions, attr, argv, envp);
            if (rc != 0)
            {
                throw new Win32Exception(rc, $"could not start '{path}' in '{workingDirectory}': {new Win32Exception(rc).Message}");
            }

            // The child has its copies; close ours so EOF on stdout/stderr means every writer is gone.
            Native.close(fds[0]);
            Native.close(fds[3]);
            Native.close(fds[5]);
            fds[0] = fds[3] = fds[5] = -1;
            var stdin = OpenPipe(fds[1], PipeDirection.Out);
            fds[1] = -1;
            var stdout = OpenPipe(fds[2], PipeDirection.In);
            fds[2] = -1;
            var stderr = OpenPipe(fds[4], PipeDirection.In);
            fds[4] = -1;
            return new ToolProcess(pid, stdin, stdout, stderr);
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
        StandardInput.Dispose();
        StandardOutput.Dispose();
        StandardError.Dispose();
        _exitedCts.Dispose();
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

    private static AnonymousPipeClientStream OpenPipe(int fd, PipeDirection direction) =>
        new(direction, new SafePipeHandle(fd, ownsHandle: true));

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

        var count = System.Text.Encoding.UTF8.GetByteCount(value);
        var buffer = (byte*)NativeMemory.Alloc((nuint)count + 1);
        allocations.Add((nint)buffer);
        System.Text.Encoding.UTF8.GetBytes(value, new Span<byte>(buffer, count));
        buffer[count] = 0;
        return buffer;
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
