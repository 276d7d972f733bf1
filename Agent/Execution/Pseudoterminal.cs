using System.ComponentModel;
using System.Runtime.InteropServices;

namespace Rbs.Agent.Execution;

/// <summary>
/// A pseudo-terminal for a tool whose client runs in a terminal: the tool gets the slave (as its controlling terminal
/// and as stderr, and as stdout/stdin when the client's are terminals too), the agent keeps the master. Whatever the
/// tool writes to the slave is read from the master; stdin bytes written to the master are the tool's keyboard.
/// </summary>
/// <remarks>
/// The slave's output post-processing (OPOST, i.e. ONLCR's "\n" → "\r\n") is switched off: the bytes reach the laptop's
/// terminal exactly as the tool wrote them, and the laptop's own line discipline, the one local bazel's output goes
/// through, translates them once. Everything else keeps Linux's defaults (canonical input, echo, ISIG), so a program
/// reading the terminal behaves as it does in a local terminal; the client sends keystrokes raw.
/// </remarks>
internal sealed unsafe class Pseudoterminal : IDisposable
{
    private const int PollIntervalMilliseconds = 200;

    private int _master;
    private int _slave;

    private Pseudoterminal(int master, int slave, string slavePath, byte endOfFile)
    {
        _master = master;
        _slave = slave;
        SlavePath = slavePath;
        EndOfFile = endOfFile;
    }

    /// <summary>The slave's device path (<c>/dev/pts/N</c>), which the tool opens after setsid to make it its controlling terminal.</summary>
    public string SlavePath { get; }

    /// <summary>The slave's VEOF character (^D): what the tool reads as end of input once the client's stdin ends.</summary>
    public byte EndOfFile { get; }

    /// <summary>Opens a master/slave pair with the given window size (0 leaves the kernel's 0×0).</summary>
    /// <exception cref="Win32Exception">The system has no pseudo-terminals to give (e.g. /dev/pts not mounted).</exception>
    public static Pseudoterminal Open(int columns, int rows)
    {
        var master = Native.posix_openpt(Native.O_RDWR | Native.O_NOCTTY | Native.O_CLOEXEC);
        if (master < 0)
        {
            throw new Win32Exception(Marshal.GetLastPInvokeError(), "posix_openpt failed");
        }

        var slave = -1;
        try
        {
            if (Native.grantpt(master) != 0 || Native.unlockpt(master) != 0)
            {
                throw new Win32Exception(Marshal.GetLastPInvokeError(), "grantpt/unlockpt failed");
            }

            var name = stackalloc byte[128];
            var rc = Native.ptsname_r(master, name, 128);
            if (rc != 0)
            {
                throw new Win32Exception(rc, "ptsname_r failed");
            }

            var slavePath = Marshal.PtrToStringUTF8((nint)name)!;

            // Held open by the agent until the tool has its own copies, so the terminal's settings and size persist
            // and the master never sees a hangup before the tool started.
            slave = Native.open(name, Native.O_RDWR | Native.O_NOCTTY | Native.O_CLOEXEC);
            if (slave < 0)
            {
                throw new Win32Exception(Marshal.GetLastPInvokeError(), $"could not open {slavePath}");
            }

            var termios = stackalloc byte[Native.TermiosSize];
            if (Native.tcgetattr(slave, termios) != 0)
            {
                throw new Win32Exception(Marshal.GetLastPInvokeError(), "tcgetattr failed");
            }

            *(uint*)(termios + Native.TermiosOflagOffset) &= ~Native.OPOST;
            if (Native.tcsetattr(slave, Native.TCSANOW, termios) != 0)
            {
                throw new Win32Exception(Marshal.GetLastPInvokeError(), "tcsetattr failed");
            }

            var endOfFile = termios[Native.TermiosCcOffset + Native.VEOF];
            var terminal = new Pseudoterminal(master, slave, slavePath, endOfFile);
            master = slave = -1;
            terminal.Resize(columns, rows);
            return terminal;
        }
        finally
        {
            if (slave >= 0)
            {
                Native.close(slave);
            }

            if (master >= 0)
            {
                Native.close(master);
            }
        }
    }

    /// <summary>
    /// Sets the window size; the kernel sends SIGWINCH to the terminal's foreground process group when it changed.
    /// False for sizes a terminal cannot have (then nothing changes).
    /// </summary>
    public bool Resize(int columns, int rows)
    {
        if (columns is < 0 or > ushort.MaxValue || rows is < 0 or > ushort.MaxValue)
        {
            return false;
        }

        var size = new Native.WindowSize { Columns = (ushort)columns, Rows = (ushort)rows };
        return Native.ioctl(Volatile.Read(ref _master), Native.TIOCSWINSZ, &size) == 0;
    }

    /// <summary>The agent's own slave descriptor: closed once the tool holds its copies, so the master reads EOF when the last of them closes.</summary>
    public void CloseSlave()
    {
        var slave = Interlocked.Exchange(ref _slave, -1);
        if (slave >= 0)
        {
            Native.close(slave);
        }
    }

    /// <summary>
    /// Reads what the tool wrote to the terminal; 0 at end (every slave descriptor closed: Linux reports EIO there).
    /// Polls so that <paramref name="cancellationToken"/> can stop a read that would otherwise block for good.
    /// </summary>
    public int Read(Span<byte> buffer, CancellationToken cancellationToken)
    {
        fixed (byte* pointer = buffer)
        {
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (!WaitFor(Native.POLLIN))
                {
                    continue;
                }

                var read = Native.read(_master, pointer, (nuint)buffer.Length);
                if (read >= 0)
                {
                    return (int)read;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno == Native.EIO)
                {
                    return 0;
                }

                if (errno is not (Native.EINTR or Native.EAGAIN))
                {
                    throw new IOException($"reading the pseudo-terminal failed: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
                }
            }
        }
    }

    /// <summary>Types <paramref name="bytes"/> on the terminal's keyboard; blocks (cancellably) while the tool does not read.</summary>
    public void Write(ReadOnlySpan<byte> bytes, CancellationToken cancellationToken)
    {
        fixed (byte* start = bytes)
        {
            var pointer = start;
            var remaining = bytes.Length;
            while (remaining > 0)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (!WaitFor(Native.POLLOUT))
                {
                    continue;
                }

                var written = Native.write(_master, pointer, (nuint)remaining);
                if (written >= 0)
                {
                    pointer += written;
                    remaining -= (int)written;
                    continue;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno is not (Native.EINTR or Native.EAGAIN))
                {
                    throw new IOException($"writing to the pseudo-terminal failed: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
                }
            }
        }
    }

    public void Dispose()
    {
        CloseSlave();
        var master = Interlocked.Exchange(ref _master, -1);
        if (master >= 0)
        {
            Native.close(master);
        }
    }

    /// <summary>True when the master is ready (or in an error/hangup state the next read or write reports); false after a quiet interval.</summary>
    private bool WaitFor(short events)
    {
        var poll = new Native.PollFd { Fd = _master, Events = events };
        var rc = Native.poll(&poll, 1, PollIntervalMilliseconds);
        if (rc < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno == Native.EINTR)
            {
                return false;
            }

            throw new IOException($"poll on the pseudo-terminal failed: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }

        return rc > 0;
    }
}
