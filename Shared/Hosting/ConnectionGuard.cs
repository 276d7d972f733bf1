using System.Runtime;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Rbs.Shared.Hosting;

/// <summary>
/// Watches the connections of a server's listening sockets. A connection that has not delivered its first request
/// within <see cref="ServerLimitsOptions.HandshakeTimeout"/> is aborted (Kestrel alone waits for the HTTP/2 preface as
/// long as its keep-alive timeout, 130 s, whatever arrives). When a burst of connections has ended, the memory they
/// used is returned to the OS with one compacting collection (<see cref="ServerLimitsOptions.ReturnMemoryAfterConnections"/>):
/// the GC frees it, but an idle server runs no collection that would give it back.
/// </summary>
internal sealed partial class ConnectionGuard(IOptions<ServerLimitsOptions> options, TimeProvider time, ILogger<ConnectionGuard> logger) : IDisposable
{
    private const string ItemKey = "rbs.connection-guard";

    /// <summary>The connection count must stay put this long before memory is returned (a burst closes over a while).</summary>
    private static readonly TimeSpan s_settle = TimeSpan.FromSeconds(2);

    /// <summary>At most one memory return per interval: a compacting collection pauses the server for a moment.</summary>
    private static readonly TimeSpan s_minReturnInterval = TimeSpan.FromSeconds(30);

    private readonly ServerLimitsOptions _options = options.Value;
    private readonly TimeProvider _time = time;
    private readonly Lock _lock = new();
    private int _open;
    private int _peak;
    private long _handshakeTimeouts;
    private ITimer? _returnTimer;
    private long _lastReturnTimestamp;

    /// <summary>Connections open now on the guarded endpoints.</summary>
    public int OpenConnections => Volatile.Read(ref _open);

    public async Task OnConnectionAsync(ConnectionContext connection, ConnectionDelegate next)
    {
        using var watch = new HandshakeWatch(this, connection);
        connection.Items[ItemKey] = watch;
        Opened();
        try
        {
            await next(connection);
        }
        finally
        {
            Closed();
        }
    }

    /// <summary>
    /// Counts a connection held before the guard's own middleware runs (the gateway's protocol sniffer on its cleartext
    /// public endpoint), for the memory return only: dispose it when that phase ends. Half-open connections closed there
    /// are then returned like the guard's own.
    /// </summary>
    public IDisposable Track()
    {
        Opened();
        return new Tracked(this);
    }

    /// <summary>
    /// Ends the handshake wait of a guarded connection that carries no HTTP request the guard could see (the gateway's
    /// relay, whose first line is its own handshake).
    /// </summary>
    public static void HandshakeCompleted(ConnectionContext connection)
    {
        if (connection.Items.TryGetValue(ItemKey, out var item) && item is HandshakeWatch watch)
        {
            watch.RequestArrived();
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _returnTimer?.Dispose();
            _returnTimer = null;
        }
    }

    private sealed class Tracked(ConnectionGuard guard) : IDisposable
    {
        private int _closed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _closed, 1) == 0)
            {
                guard.Closed();
            }
        }
    }

    private void Opened()
    {
        lock (_lock)
        {
            _open++;
            _peak = Math.Max(_peak, _open);
        }
    }

    private void Closed()
    {
        lock (_lock)
        {
            _open--;
            var threshold = _options.ReturnMemoryAfterConnections;
            if (threshold <= 0 || _peak - _open < threshold)
            {
                return;
            }

            // Debounced: every close pushes the return back until the count settles, but never past the interval's end.
            var due = s_settle;
            if (_lastReturnTimestamp != 0)
            {
                var sinceLast = _time.GetElapsedTime(_lastReturnTimestamp);
                if (sinceLast + due < s_minReturnInterval)
                {
                    due = s_minReturnInterval - sinceLast;
                }
            }

            _returnTimer ??= _time.CreateTimer(_ => ReturnMemory(), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            _returnTimer.Change(due, Timeout.InfiniteTimeSpan);
        }
    }

    private void ReturnMemory()
    {
        int peak, open;
        lock (_lock)
        {
            peak = _peak;
            open = _open;
            _peak = _open;
            _lastReturnTimestamp = _time.GetTimestamp();
        }

        var before = Environment.WorkingSet;
        // Aggressive: compact and decommit what is free, which a gen0/gen2 collection on its own keeps for reuse.
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        Log.MemoryReturned(logger, peak - open, peak, open, before / (1024 * 1024), Environment.WorkingSet / (1024 * 1024));
    }

    private void HandshakeTimedOut(ConnectionContext connection)
    {
        var count = Interlocked.Increment(ref _handshakeTimeouts);
        Log.HandshakeTimedOut(logger, connection.ConnectionId, connection.RemoteEndPoint?.ToString() ?? "?", _options.HandshakeTimeout, count);
        connection.Abort(new ConnectionAbortedException($"no request within the handshake timeout ({_options.HandshakeTimeout})"));
    }

    /// <summary>The handshake timer of one connection; the first request on the connection stops it.</summary>
    private sealed class HandshakeWatch : IDisposable
    {
        private readonly ITimer _timer;
        private int _settled;

        public HandshakeWatch(ConnectionGuard guard, ConnectionContext connection) =>
            _timer = guard._time.CreateTimer(
                _ =>
                {
                    if (Interlocked.Exchange(ref _settled, 1) == 0)
                    {
                        guard.HandshakeTimedOut(connection);
                    }
                },
                null,
                guard._options.HandshakeTimeout,
                Timeout.InfiniteTimeSpan);

        public void RequestArrived()
        {
            if (Volatile.Read(ref _settled) == 0 && Interlocked.Exchange(ref _settled, 1) == 0)
            {
                _timer.Dispose();
            }
        }

        public void Dispose()
        {
            Interlocked.Exchange(ref _settled, 1);
            _timer.Dispose();
        }
    }

    /// <summary>First middleware of the pipeline: a request on a guarded connection ends its handshake wait.</summary>
    internal sealed class FirstRequestFilter : IStartupFilter
    {
        public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
        {
            app.Use((context, nextMiddleware) =>
            {
                if (context.Features.Get<IConnectionItemsFeature>()?.Items is { } items
                    && items.TryGetValue(ItemKey, out var item) && item is HandshakeWatch watch)
                {
                    watch.RequestArrived();
                }

                return nextMiddleware(context);
            });
            next(app);
        };
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 900, Level = LogLevel.Debug, Message = "Connection {ConnectionId} from {Remote} sent no request within {Timeout}; closed ({Count} so far)")]
        public static partial void HandshakeTimedOut(ILogger logger, string connectionId, string remote, TimeSpan timeout, long count);

        [LoggerMessage(EventId = 901, Level = LogLevel.Information, Message = "{Closed} connections closed since a peak of {Peak} ({Open} open): returned free memory to the OS, working set {BeforeMiB} -> {AfterMiB} MiB")]
        public static partial void MemoryReturned(ILogger logger, int closed, int peak, int open, long beforeMiB, long afterMiB);
    }
}
