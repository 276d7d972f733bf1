using System.Globalization;
using System.Net;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Rbs.Shared.Hosting;

namespace Rbs.Gateway.Hosting;

/// <summary>
/// The two Kestrel endpoints. Each connection is tagged with the endpoint it arrived on, so client routes
/// are only reachable on the public endpoint and tunnel/registry routes only on the agent endpoint.
/// </summary>
internal sealed class GatewayEndpoints
{
    private const string KindKey = "rbs.gateway.endpoint";
    private const string PublicKind = "public";
    private const string AgentKind = "agent";

    private ListenOptions? _public;
    private ListenOptions? _agent;
    private bool _publicTls;

    /// <summary>The bound public address (after start), e.g. <c>http://127.0.0.1:8080</c>.</summary>
    public string PublicAddress => Format(_public, _publicTls);

    /// <summary>The bound agent address (after start), e.g. <c>http://127.0.0.1:8081</c>.</summary>
    public string AgentAddress => Format(_agent, tls: false);

    public void Configure(KestrelServerOptions kestrel, GatewayOptions options)
    {
        // Bounded buffering per client stream (thousands of concurrent streams must fit in well under 1 GiB):
        // uploads wait on the HTTP/2 window, downloads on the response buffer; each stream has its own of both,
        // so one slow client never stalls another.
        kestrel.Limits.Http2.InitialStreamWindowSize = options.PublicStreamWindowSize;
        kestrel.Limits.Http2.InitialConnectionWindowSize = Math.Max(kestrel.Limits.Http2.InitialConnectionWindowSize, options.PublicStreamWindowSize);
        kestrel.Limits.MaxResponseBufferSize = options.PublicResponseBufferSize;
        Listen(kestrel, options.PublicListen, listen =>
        {
            _public = listen;
            if (string.IsNullOrEmpty(options.CertificatePath))
            {
                // A relay request is the connection's first line, before any HTTP (Relay/ClientRelay.cs).
                Relay.ClientRelay.Use(listen);

                // Cleartext: a browser (the dashboard) is relayed to HTTP/1.1 before the guard sees it (Dashboard/).
                Dashboard.DashboardHttp1Fallback.Use(listen);
            }

            // First, so a TLS handshake that stalls counts against the handshake timeout too.
            listen.UseConnectionGuard();
            Tag(listen, PublicKind);
            if (!string.IsNullOrEmpty(options.CertificatePath))
            {
                // ALPN negotiates h2 for gRPC clients.
                listen.Protocols = HttpProtocols.Http1AndHttp2;
                listen.UseHttps(options.CertificatePath, options.CertificatePassword);
                // With TLS the relay request is the first line inside it.
                Relay.ClientRelay.Use(listen);
                _publicTls = true;
            }
            else
            {
                // Cleartext HTTP/2 needs prior knowledge: no HTTP/1.1 upgrade dance for gRPC.
                listen.Protocols = HttpProtocols.Http2;
            }
        });
        Listen(kestrel, options.AgentListen, listen =>
        {
            _agent = listen;
            listen.UseConnectionGuard();
            Tag(listen, AgentKind);
            // Tunnels are WebSockets over HTTP/1.1.
            listen.Protocols = HttpProtocols.Http1;
        });
    }

    /// <summary>Connections of <paramref name="listen"/> count as public ones (the dashboard's HTTP/1.1 listener behind the cleartext public endpoint).</summary>
    public static void TagPublic(ListenOptions listen) => Tag(listen, PublicKind);

    public static bool IsPublic(HttpContext context) => Kind(context) == PublicKind;

    public static bool IsAgent(HttpContext context) => Kind(context) == AgentKind;

    private static string? Kind(HttpContext context) =>
        context.Features.Get<IConnectionItemsFeature>()?.Items.TryGetValue(KindKey, out var kind) == true ? kind as string : null;

    private static void Tag(ListenOptions listen, string kind) =>
        listen.Use(next => connection =>
        {
            connection.Items[KindKey] = kind;
            return next(connection);
        });

    private static void Listen(KestrelServerOptions kestrel, string address, Action<ListenOptions> configure)
    {
        var (host, port) = ParseHostPort(address);
        if (string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase))
        {
            kestrel.ListenLocalhost(port, configure);
        }
        else if (host is "*" or "")
        {
            kestrel.ListenAnyIP(port, configure);
        }
        else
        {
            kestrel.Listen(IPAddress.Parse(host), port, configure);
        }
    }

    internal static (string Host, int Port) ParseHostPort(string address)
    {
        var colon = address.LastIndexOf(':');
        if (colon < 0 || !int.TryParse(address.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port > 65535)
        {
            throw new FormatException($"'{address}' is not a listen address of the form host:port (e.g. 127.0.0.1:8080, 0.0.0.0:8080, [::]:8080).");
        }

        var host = address[..colon].Trim('[', ']');
        return (host, port);
    }

    private static string Format(ListenOptions? listen, bool tls)
    {
        if (listen?.IPEndPoint is not { } endPoint)
        {
            throw new InvalidOperationException("The gateway endpoints are not bound yet.");
        }

        var host = endPoint.Address.Equals(IPAddress.Any) ? "127.0.0.1"
            : endPoint.Address.Equals(IPAddress.IPv6Any) ? "[::1]"
            : endPoint.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{endPoint.Address}]"
            : endPoint.Address.ToString();
        return $"{(tls ? "https" : "http")}://{host}:{endPoint.Port}";
    }
}
