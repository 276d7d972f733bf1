using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;
using Rbs.Shared.Tunnel;

namespace Rbs.Agent.Tunnel;

/// <summary>
/// One tunnel handed to Kestrel as a transport connection carrying one inner HTTP/2 connection: a WebSocket tunnel, or a
/// TLS relay tunnel (<see cref="RelayTunnelDialer"/>; plain relay tunnels use Kestrel's socket transport instead).
/// </summary>
internal sealed class TunnelConnection : ConnectionContext,
    IConnectionIdFeature, IConnectionItemsFeature, IConnectionTransportFeature, IConnectionLifetimeFeature, IConnectionEndPointFeature
{
    /// <summary>Key of this connection in its items (<see cref="IConnectionItemsFeature"/>), for <see cref="TunnelStreamCounter"/>.</summary>
    public const string ItemKey = "rbs.agent.tunnel";

    private static long s_nextId;
    private readonly Stream _stream;
    private readonly Action _abort;
    private readonly CancellationTokenSource _closed = new();
    private readonly Action<TunnelConnection> _onDisposed;
    private readonly Action<TunnelConnection>? _onBusy;
    private readonly int _busyThreshold;
    private int _disposed;
    private int _streams;

    /// <param name="onBusy">Called each time the stream count rises to <paramref name="busyThreshold"/> (time to dial another spare).</param>
    public TunnelConnection(WebSocketTunnelStream stream, EndPoint localEndPoint, Action<TunnelConnection> onDisposed,
        Action<TunnelConnection>? onBusy = null, int busyThreshold = int.MaxValue)
        : this(stream, stream.Closed, stream.Abort, localEndPoint, onDisposed, onBusy, busyThreshold)
    {
    }

    /// <param name="stream">The tunnel's bytes; disposed with the connection.</param>
    /// <param name="closed">Completes when the tunnel is known to be gone (null: only reads and writes find out).</param>
    /// <param name="abort">Cuts the tunnel at once (<see cref="Abort"/>).</param>
    /// <param name="onBusy">Called each time the stream count rises to <paramref name="busyThreshold"/> (time to dial another spare).</param>
    public TunnelConnection(Stream stream, Task? closed, Action abort, EndPoint localEndPoint, Action<TunnelConnection> onDisposed,
        Action<TunnelConnection>? onBusy = null, int busyThreshold = int.MaxValue)
    {
        _stream = stream;
        _abort = abort;
        _onDisposed = onDisposed;
        _onBusy = onBusy;
        _busyThreshold = busyThreshold;
        ConnectionId = "tunnel-" + Interlocked.Increment(ref s_nextId).ToString(System.Globalization.CultureInfo.InvariantCulture);
        LocalEndPoint = localEndPoint;
        Transport = new Pipe(
            PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: 32 * 1024, minimumReadSize: 4 * 1024, leaveOpen: true)),
            PipeWriter.Create(stream, new StreamPipeWriterOptions(minimumBufferSize: 32 * 1024, leaveOpen: true)));
        Features.Set<IConnectionIdFeature>(this);
        Features.Set<IConnectionItemsFeature>(this);
        Features.Set<IConnectionTransportFeature>(this);
        Features.Set<IConnectionLifetimeFeature>(this);
        Features.Set<IConnectionEndPointFeature>(this);
        Items[ItemKey] = this;
        _ = closed?.ContinueWith(_ => CancelClosed(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    /// <summary>HTTP/2 streams (requests) in flight on this tunnel.</summary>
    public int ActiveStreams => Volatile.Read(ref _streams);

    internal void StreamStarted()
    {
        if (Interlocked.Increment(ref _streams) == _busyThreshold)
        {
            _onBusy?.Invoke(this);
        }
    }

    internal void StreamEnded() => Interlocked.Decrement(ref _streams);

    public override string ConnectionId { get; set; }

    public override IFeatureCollection Features { get; } = new FeatureCollection();

    public override IDictionary<object, object?> Items { get; set; } = new Dictionary<object, object?>();

    public override IDuplexPipe Transport { get; set; }

    public override CancellationToken ConnectionClosed
    {
        get => _closed.Token;
        set => throw new NotSupportedException();
    }

    public override EndPoint? LocalEndPoint { get; set; }

    public override EndPoint? RemoteEndPoint { get; set; }

    public override void Abort(ConnectionAbortedException abortReason)
    {
        _abort();
        CancelClosed();
    }

    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            await base.DisposeAsync();
            return;
        }

        try
        {
            await Transport.Input.CompleteAsync();
            // Completing the writer flushes what Kestrel buffered; on a dead tunnel that throws.
            await Transport.Output.CompleteAsync();
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or InvalidOperationException)
        {
            // The tunnel is gone; nothing left to flush to.
        }
        finally
        {
            await _stream.DisposeAsync();
            CancelClosed();
            _closed.Dispose();
            _onDisposed(this);
        }

        await base.DisposeAsync();
    }

    private void CancelClosed()
    {
        try
        {
            _closed.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Already disposed: nobody is listening any more.
        }
    }

    private sealed class Pipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input => input;

        public PipeWriter Output => output;
    }
}
