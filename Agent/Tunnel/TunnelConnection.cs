using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace Rbs.Agent.Tunnel;

/// <summary>One tunnel handed to Kestrel as a transport connection carrying one inner HTTP/2 connection.</summary>
internal sealed class TunnelConnection : ConnectionContext,
    IConnectionIdFeature, IConnectionItemsFeature, IConnectionTransportFeature, IConnectionLifetimeFeature, IConnectionEndPointFeature
{
    private static long s_nextId;
    private readonly WebSocketTunnelStream _stream;
    private readonly CancellationTokenSource _closed = new();
    private readonly Action<TunnelConnection> _onDisposed;
    private int _disposed;

    public TunnelConnection(WebSocketTunnelStream stream, EndPoint localEndPoint, Action<TunnelConnection> onDisposed)
    {
        _stream = stream;
        _onDisposed = onDisposed;
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
        _ = stream.Closed.ContinueWith(_ => CancelClosed(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    public WebSocketTunnelStream Stream => _stream;

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
        _stream.Abort();
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
