// Both ends of a tunnel (agent and gateway) compile this from Shared/: one file, one namespace.
using System.Net.WebSockets;

namespace Rbs.Shared.Tunnel;

/// <summary>
/// A WebSocket as a byte stream carrying one inner HTTP/2 connection. Every read goes through one
/// outstanding receive into an internal buffer, which (1) lets an idle tunnel keep a receive pending so a
/// peer's close, a keepalive timeout or a dead socket is noticed at once (pongs and close frames are only
/// processed by a pending receive), (2) lets the owner observe the first bytes without consuming them,
/// and (3) makes a cancelled read harmless: cancelling a WebSocket receive would abort the socket, so a
/// cancelled <see cref="ReadAsync(Memory{byte}, CancellationToken)"/> leaves the receive pending for the next read.
/// </summary>
internal sealed class WebSocketTunnelStream(WebSocket webSocket) : Stream
{
    private const int BufferSize = 64 * 1024;
    private static readonly TimeSpan s_closeTimeout = TimeSpan.FromSeconds(1);

    private readonly byte[] _buffer = new byte[BufferSize];
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task<int>? _pendingReceive;
    private int _bufferOffset;
    private int _bufferCount;
    private int _disposed;

    /// <summary>Completes when the stream is disposed or aborted (not when the peer merely stops sending).</summary>
    public Task Closed => _closed.Task;

    public WebSocket WebSocket => webSocket;

    /// <summary>Bytes received but not read yet (e.g. the ones <see cref="WaitForDataAsync"/> observed), without consuming them.</summary>
    public ReadOnlySpan<byte> Buffered => _buffer.AsSpan(_bufferOffset, _bufferCount);

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    /// <summary>
    /// Starts (or returns) the pending receive. Completes with the byte count now buffered: &gt; 0 when
    /// the peer sent data (which the next read returns), 0 when the tunnel closed or failed. Not thread-safe, like
    /// the reads: concurrent first calls could start two receives, so a second party (the gateway's idle watch) must
    /// make its call before it hands the stream on.
    /// </summary>
    public Task<int> WaitForDataAsync()
    {
        if (_bufferCount > 0)
        {
            return Task.FromResult(_bufferCount);
        }

        return _pendingReceive ??= ReceiveIntoBufferAsync();
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        if (_bufferCount > 0)
        {
            // Buffered bytes come from a receive that already completed (e.g. the one WaitForDataAsync observed).
            _pendingReceive = null;
        }
        else
        {
            var pending = _pendingReceive ??= ReceiveIntoBufferAsync();
            int received;
            try
            {
                received = await pending.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                // The receive stays pending for the next read; see the class comment.
                throw;
            }

            _pendingReceive = null;
            if (received == 0)
            {
                return 0;
            }
        }

        var n = Math.Min(destination.Length, _bufferCount);
        _buffer.AsMemory(_bufferOffset, n).CopyTo(destination);
        _bufferOffset += n;
        _bufferCount -= n;
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) =>
        ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default)
    {
        try
        {
            await webSocket.SendAsync(source, WebSocketMessageType.Binary, endOfMessage: true, cancellationToken).ConfigureAwait(false);
        }
        catch (WebSocketException ex)
        {
            throw new IOException("The tunnel connection was lost while sending.", ex);
        }
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

    /// <summary>Kills the connection without a close handshake (dead peer, shutdown, tests).</summary>
    public void Abort()
    {
        webSocket.Abort();
        _closed.TrySetResult();
    }

    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            if (webSocket.State is WebSocketState.Open or WebSocketState.CloseReceived)
            {
                using var timeout = new CancellationTokenSource(s_closeTimeout);
                await webSocket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, timeout.Token).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or ObjectDisposedException or IOException)
        {
            // The peer is gone already; aborting below is all that is left to do.
        }

        webSocket.Abort();
        webSocket.Dispose();
        _closed.TrySetResult();
        await base.DisposeAsync().ConfigureAwait(false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        base.Dispose(disposing);
    }

    private async Task<int> ReceiveIntoBufferAsync()
    {
        try
        {
            while (true)
            {
                // No cancellation token: cancelling a WebSocket receive aborts the socket.
                var result = await webSocket.ReceiveAsync(_buffer.AsMemory(), CancellationToken.None).ConfigureAwait(false);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    return 0;
                }

                if (result.Count > 0)
                {
                    _bufferOffset = 0;
                    _bufferCount = result.Count;
                    return result.Count;
                }
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or ObjectDisposedException or IOException)
        {
            // A dead tunnel reads as end of stream; the HTTP/2 layer above reports the broken connection.
            return 0;
        }
    }
}
