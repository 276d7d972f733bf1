using System.Runtime.InteropServices;

namespace Rbs.JBazel.Terminal;

/// <summary>
/// A raw, unbuffered stream over an inherited file descriptor using plain read(2)/write(2).
/// </summary>
/// <remarks>
/// Why not the framework's streams: <c>Console.OpenStandardOutput()</c> silently swallows EPIPE (so
/// <c>jbazel ... | head</c> would drain the whole remote output into a closed pipe), and a
/// <see cref="FileStream"/> over a regular file keeps its own offset and uses pwrite(2), overwriting what
/// the shell or a sibling descriptor (<c>&gt;&gt; log 2&gt;&amp;1</c>) wrote. write(2) on the shared
/// descriptor appends exactly like any other Unix tool.
/// </remarks>
internal sealed partial class FileDescriptorStream(int fd, bool canRead) : Stream
{
    private const int EINTR = 4;
    private const int EAGAIN = 11;
    private const int EWOULDBLOCK_BSD = 35;

    public override bool CanRead => canRead;

    public override bool CanWrite => !canRead;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override unsafe int Read(Span<byte> buffer)
    {
        fixed (byte* pointer = buffer)
        {
            while (true)
            {
                var read = NativeRead(fd, pointer, (nuint)buffer.Length);
                if (read >= 0)
                {
                    return (int)read;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno == EINTR)
                {
                    continue;
                }

                if (IsWouldBlock(errno))
                {
                    Thread.Sleep(5);
                    continue;
                }

                throw new IOException($"read from descriptor {fd} failed: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
            }
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override unsafe void Write(ReadOnlySpan<byte> buffer)
    {
        fixed (byte* start = buffer)
        {
            var pointer = start;
            var remaining = buffer.Length;
            while (remaining > 0)
            {
                var written = NativeWrite(fd, pointer, (nuint)remaining);
                if (written >= 0)
                {
                    pointer += written;
                    remaining -= (int)written;
                    continue;
                }

                var errno = Marshal.GetLastPInvokeError();
                if (errno == EINTR)
                {
                    continue;
                }

                if (IsWouldBlock(errno))
                {
                    // A descriptor someone left non-blocking (a shared terminal): wait and retry.
                    Thread.Sleep(1);
                    continue;
                }

                // EPIPE (SIGPIPE is ignored by the .NET runtime), EBADF, ENOSPC, ...
                throw new IOException($"write to descriptor {fd} failed: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
            }
        }
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    private static bool IsWouldBlock(int errno) =>
        errno == EAGAIN ? OperatingSystem.IsLinux() : errno == EWOULDBLOCK_BSD && OperatingSystem.IsMacOS();

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static unsafe partial nint NativeRead(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static unsafe partial nint NativeWrite(int fd, byte* buffer, nuint count);
}
