using System.Net.Sockets;

namespace Rbs.JBazel.Remote;

/// <summary>
/// A connection's socket with reads coalesced: the HTTP/2 client reads its frames a few KiB at a time (~8 KiB per
/// receive, 131k receive calls for a 1 GiB stdout, where the syscalls were most of jbazel's CPU), while this reads
/// whatever the socket holds, up to <see cref="BufferSize"/>, and hands it out from memory. Writes pass straight
/// through (HTTP/2 frames go out when the client writes them). One reader and one writer may use it at once, as the
/// HTTP/2 connection does; reads are not concurrent with each other.
/// </summary>
internal sealed class ReadAheadStream(Stream inner) : Stream
{
    /// <summary>Read-ahead per connection: 256 KiB, the agent's largest output frame.</summary>
    public const int BufferSize = 256 * 1024;

    private readonly byte[] _buffer = new byte[BufferSize];
    private int _start;
    private int _end;

    /// <summary>Opens a TCP connection for SocketsHttpHandler.ConnectCallback: no Nagle delay, reads coalesced.</summary>
    public static async ValueTask<Stream> ConnectAsync(System.Net.Http.SocketsHttpConnectionContext context, CancellationToken cancellationToken)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(context.DnsEndPoint, cancellationToken);
            return new ReadAheadStream(new NetworkStream(socket, ownsSocket: true));
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (buffer.IsEmpty)
        {
            return 0;
        }

        if (_start == _end)
        {
            if (buffer.Length >= BufferSize)
            {
                return await inner.ReadAsync(buffer, cancellationToken);
            }

            _start = 0;
            _end = await inner.ReadAsync(_buffer, cancellationToken);
            if (_end == 0)
            {
                return 0;
            }
        }

        return Take(buffer.Span);
    }

    public override int Read(Span<byte> buffer)
    {
        if (buffer.IsEmpty)
        {
            return 0;
        }

        if (_start == _end)
        {
            if (buffer.Length >= BufferSize)
            {
                return inner.Read(buffer);
            }

            _start = 0;
            _end = inner.Read(_buffer);
            if (_end == 0)
            {
                return 0;
            }
        }

        return Take(buffer);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        inner.WriteAsync(buffer, cancellationToken);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        inner.WriteAsync(buffer, offset, count, cancellationToken);

    public override void Write(ReadOnlySpan<byte> buffer) => inner.Write(buffer);

    public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);

    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

    public override void Flush() => inner.Flush();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }

    private int Take(Span<byte> destination)
    {
        var count = Math.Min(destination.Length, _end - _start);
        _buffer.AsSpan(_start, count).CopyTo(destination);
        _start += count;
        return count;
    }
}
