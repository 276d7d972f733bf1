using Rbs.Shared.Tunnel;

namespace Rbs.Gateway.Tunnel;

/// <summary>
/// A claimed tunnel on which the gateway already sent the HTTP/2 client connection preface (the liveness probe
/// in <see cref="AgentTunnels"/>) and saw the agent's SETTINGS frame. The HTTP/2 client then writes its own
/// preface first; this stream drops exactly those 24 bytes so the agent's Kestrel sees one preface, followed
/// by the client's SETTINGS. Reads pass through, starting with the agent's buffered SETTINGS.
/// </summary>
internal sealed class PrefaceSentStream(WebSocketTunnelStream inner) : Stream
{
    /// <summary>RFC 9113 §3.4: the client connection preface.</summary>
    public static ReadOnlyMemory<byte> Preface { get; } = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray();

    private int _prefaceToSkip = Preface.Length;

    public WebSocketTunnelStream Inner => inner;

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default) =>
        inner.ReadAsync(destination, cancellationToken);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) =>
        ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default)
    {
        if (_prefaceToSkip > 0)
        {
            var n = Math.Min(_prefaceToSkip, source.Length);
            var expected = Preface.Span.Slice(Preface.Length - _prefaceToSkip, n);
            if (!source.Span[..n].SequenceEqual(expected))
            {
                // Only an HTTP/2 client may use a probed tunnel; anything else would corrupt the agent's connection.
                throw new IOException("the HTTP/2 client did not start with the connection preface");
            }

            _prefaceToSkip -= n;
            source = source[n..];
            if (source.IsEmpty)
            {
                return ValueTask.CompletedTask;
            }
        }

        return inner.WriteAsync(source, cancellationToken);
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) =>
        WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override async ValueTask DisposeAsync()
    {
        await inner.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }
}
