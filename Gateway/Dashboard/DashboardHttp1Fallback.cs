using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Options;
using Rbs.Gateway.Hosting;
using Rbs.Shared.Hosting;

namespace Rbs.Gateway.Dashboard;

/// <summary>
/// Browsers on the cleartext public endpoint. That endpoint speaks HTTP/2 with prior knowledge (jbazel's gRPC); no browser
/// does, and Kestrel cannot yet choose HTTP/1.1 or HTTP/2 on one cleartext port (dotnet/aspnetcore#56984). So the
/// public endpoint looks at a connection's first bytes: the HTTP/2 preface ("PRI * HTTP/2.0") goes on as before; anything
/// else (a browser's "GET /dashboard/") is relayed to a private HTTP/1.1 listener of this same gateway on a Unix socket,
/// whose connections count as public ones. With TLS (--certificate) none of this runs: ALPN chooses, and the public
/// endpoint serves HTTP/1.1 and HTTP/2 alike. The relay carries only what is not gRPC: dashboard pages, its sign-in and
/// WebSocket, or a stray request (which then gets the public endpoint's answers, a 404 outside /dashboard).
/// </summary>
internal sealed partial class DashboardHttp1Fallback(ILogger<DashboardHttp1Fallback> logger) : IDisposable
{
    private static ReadOnlySpan<byte> Http2PrefaceStart => "PRI "u8;

    /// <summary>
    /// The private HTTP/1.1 listener's socket. On Linux a name in the abstract namespace (leading NUL): no file, so a
    /// gateway that is killed leaves nothing behind; elsewhere a file in the temp directory, removed at stop.
    /// </summary>
    public string SocketPath { get; } = OperatingSystem.IsLinux()
        ? $"\0rbs-gateway-{Environment.ProcessId}-{Guid.NewGuid():N}"
        : Path.Combine(Path.GetTempPath(), $"rbs-gateway-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..12]}.sock");

    private bool IsFile => SocketPath[0] != '\0';

    /// <summary>The cleartext public endpoint: sniff each connection before anything else runs on it.</summary>
    public static void Use(ListenOptions listen) =>
        listen.Use(next =>
        {
            var fallback = listen.ApplicationServices.GetRequiredService<DashboardHttp1Fallback>();
            var guard = listen.ApplicationServices.GetRequiredService<ConnectionGuard>();
            var timeout = listen.ApplicationServices.GetRequiredService<IOptions<ServerLimitsOptions>>().Value.HandshakeTimeout;
            return connection => fallback.OnConnectionAsync(connection, next, guard, timeout);
        });

    /// <summary>The private listener (HTTP/1.1 on <see cref="SocketPath"/>, guarded, tagged public); cleartext gateways only.</summary>
    public void Listen(KestrelServerOptions kestrel)
    {
        if (IsFile)
        {
            File.Delete(SocketPath);
        }

        kestrel.Listen(new UnixDomainSocketEndPoint(SocketPath), listen =>
        {
            listen.Protocols = HttpProtocols.Http1;
            listen.UseConnectionGuard();
            GatewayEndpoints.TagPublic(listen);
        });
    }

    public void Dispose()
    {
        if (!IsFile)
        {
            return;
        }

        try
        {
            File.Delete(SocketPath);
        }
        catch (IOException)
        {
        }
    }

    private async Task OnConnectionAsync(ConnectionContext connection, ConnectionDelegate next, ConnectionGuard guard, TimeSpan timeout)
    {
        bool? http2;
        // Counted while sniffed, so that many silent connections closed here give their memory back as the guard's do.
        using (guard.Track())
        using (var sniff = new CancellationTokenSource(timeout))
        {
            http2 = await SniffAsync(connection.Transport.Input, sniff.Token);
        }

        if (http2 is null)
        {
            // Nothing arrived within the handshake timeout, as the connection guard would have decided.
            connection.Abort(new ConnectionAbortedException("no request within the handshake timeout"));
            return;
        }

        if (http2.Value)
        {
            await next(connection);
            return;
        }

        await RelayAsync(connection);
    }

    /// <summary>True for HTTP/2's preface, false for anything else, null on a timeout. Consumes nothing.</summary>
    private static async Task<bool?> SniffAsync(PipeReader input, CancellationToken cancellationToken)
    {
        try
        {
            while (true)
            {
                var result = await input.ReadAsync(cancellationToken);
                var buffer = result.Buffer;
                if (buffer.Length >= Http2PrefaceStart.Length || result.IsCompleted)
                {
                    var start = buffer.Length >= Http2PrefaceStart.Length ? buffer.Slice(0, Http2PrefaceStart.Length).ToArray() : buffer.ToArray();
                    input.AdvanceTo(buffer.Start);
                    // A connection that closed early goes on to Kestrel, which ends it as it would have.
                    return result.IsCompleted && buffer.Length < Http2PrefaceStart.Length || start.AsSpan().SequenceEqual(Http2PrefaceStart);
                }

                input.AdvanceTo(buffer.Start, buffer.End);
            }
        }
        catch (OperationCanceledException)
        {
            return null;
        }
    }

    private async Task RelayAsync(ConnectionContext connection)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(connection.ConnectionClosed);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), stop.Token);
            await using var inner = new NetworkStream(socket, ownsSocket: false);
            var toInner = connection.Transport.Input.CopyToAsync(inner, stop.Token);
            var toOuter = inner.CopyToAsync(connection.Transport.Output, stop.Token);
            await Task.WhenAny(toInner, toOuter);
            await stop.CancelAsync();
            await Task.WhenAll(toInner, toOuter).ContinueWith(static t => _ = t.Exception, TaskScheduler.Default);
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException)
        {
            Log.RelayEnded(logger, connection.ConnectionId, e.GetType().Name);
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 176, Level = LogLevel.Debug, Message = "Dashboard HTTP/1.1 relay of connection {ConnectionId} ended ({Reason})")]
        public static partial void RelayEnded(ILogger logger, string connectionId, string reason);
    }
}
