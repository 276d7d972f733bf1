using System.Globalization;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Rbs.Shared.Hosting;

/// <summary>
/// The connection limits of a server's listening sockets (section <c>&lt;Server&gt;:Limits</c>, e.g.
/// <c>Gateway:Limits:HandshakeTimeout</c>, env <c>Gateway__Limits__HandshakeTimeout</c>). Every value is set
/// deliberately instead of left to Kestrel's defaults, which let a connection that never sends the HTTP/2 preface
/// live for the 130 s keep-alive timeout and put no bound on how many there are. docs/limits.md is the reference.
/// </summary>
internal sealed class ServerLimitsOptions
{
    public const string SubsectionName = "Limits";

    /// <summary>
    /// A new connection must have sent its first complete request (TLS handshake, HTTP/2 preface and SETTINGS, the
    /// first request's headers) within this time, else it is closed. Listening sockets only: an agent's tunnels are
    /// connections the agent dialled itself. Default <c>00:00:10</c>.
    /// </summary>
    public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// A connection with no request in progress is closed after this long (Kestrel <c>KeepAliveTimeout</c>). It is
    /// also how long a used agent tunnel stays open between builds, so it stays at Kestrel's value. Upgraded
    /// connections (the gateway's tunnel WebSockets) and open gRPC streams, however quiet, are not affected.
    /// Default <c>00:02:10</c>.
    /// </summary>
    public TimeSpan KeepAliveTimeout { get; set; } = TimeSpan.FromSeconds(130);

    /// <summary>Time to receive a request's headers once they started (Kestrel <c>RequestHeadersTimeout</c>). Default <c>00:00:10</c>.</summary>
    public TimeSpan RequestHeadersTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Open connections per listening endpoint (Kestrel <c>MaxConcurrentConnections</c>); beyond it a new connection is
    /// closed at once. An upgraded connection stops counting here and counts in <see cref="MaxUpgradedConnections"/>.
    /// Default <c>4096</c>.
    /// </summary>
    public int MaxConnections { get; set; } = 4096;

    /// <summary>Upgraded (WebSocket) connections of the whole server: the gateway's agent tunnels (Kestrel <c>MaxConcurrentUpgradedConnections</c>). Default <c>16384</c>.</summary>
    public int MaxUpgradedConnections { get; set; } = 16384;

    /// <summary>
    /// Concurrent HTTP/2 streams per connection (Kestrel <c>Http2.MaxStreamsPerConnection</c>). An agent in tunnel
    /// mode uses <c>Agent:Tunnel:MaxStreamsPerTunnel</c> (1000) instead: the gateway multiplexes many clients over one tunnel.
    /// Default <c>100</c>.
    /// </summary>
    public int MaxStreamsPerConnection { get; set; } = 100;

    /// <summary>Total size of a request's headers (Kestrel <c>MaxRequestHeadersTotalSize</c>). Default <c>32768</c>.</summary>
    public int MaxRequestHeadersTotalSize { get; set; } = 32 * 1024;

    /// <summary>
    /// When this many connections have closed since the peak (a burst such as a flood of half-open connections has
    /// ended), the server runs one compacting garbage collection that returns the freed memory to the OS (without it
    /// an idle server keeps it for good). At most once per <c>00:00:30</c>; 0 disables it. Default <c>256</c>.
    /// </summary>
    public int ReturnMemoryAfterConnections { get; set; } = 256;

    /// <summary>The keys and defaults for a server's <c>--help</c>.</summary>
    public static IEnumerable<ServerSetting> Describe(string serverSection)
    {
        var defaults = new ServerLimitsOptions();
        var prefix = $"{serverSection}:{SubsectionName}:";
        yield return new(prefix + nameof(HandshakeTimeout), Format(defaults.HandshakeTimeout), "A new connection must send its first request within this time, else it is closed.");
        yield return new(prefix + nameof(KeepAliveTimeout), Format(defaults.KeepAliveTimeout), "A connection with no request in progress is closed after this long.");
        yield return new(prefix + nameof(RequestHeadersTimeout), Format(defaults.RequestHeadersTimeout), "Time to receive a request's headers.");
        yield return new(prefix + nameof(MaxConnections), Format(defaults.MaxConnections), "Open connections per listening endpoint; more are closed at once.");
        yield return new(prefix + nameof(MaxUpgradedConnections), Format(defaults.MaxUpgradedConnections), "Upgraded (WebSocket) connections of the whole server.");
        yield return new(prefix + nameof(MaxStreamsPerConnection), Format(defaults.MaxStreamsPerConnection), "Concurrent HTTP/2 streams per connection.");
        yield return new(prefix + nameof(MaxRequestHeadersTotalSize), Format(defaults.MaxRequestHeadersTotalSize), "Bytes of request headers.");
        yield return new(prefix + nameof(ReturnMemoryAfterConnections), Format(defaults.ReturnMemoryAfterConnections), "Connections closed since the peak after which freed memory is returned to the OS; 0 = never.");
    }

    private static string Format(TimeSpan value) => value.ToString("c", CultureInfo.InvariantCulture);

    private static string Format(int value) => value.ToString(CultureInfo.InvariantCulture);
}

/// <summary>Start-up checks of <see cref="ServerLimitsOptions"/>, naming the key to fix.</summary>
internal sealed class ServerLimitsValidator(string section) : IValidateOptions<ServerLimitsOptions>
{
    public ValidateOptionsResult Validate(string? name, ServerLimitsOptions options)
    {
        var failures = new List<string>();
        var prefix = $"{section}:{ServerLimitsOptions.SubsectionName}:";
        Positive(options.HandshakeTimeout, nameof(options.HandshakeTimeout));
        Positive(options.KeepAliveTimeout, nameof(options.KeepAliveTimeout));
        Positive(options.RequestHeadersTimeout, nameof(options.RequestHeadersTimeout));
        AtLeast(options.MaxConnections, 1, nameof(options.MaxConnections));
        AtLeast(options.MaxUpgradedConnections, 1, nameof(options.MaxUpgradedConnections));
        AtLeast(options.MaxStreamsPerConnection, 1, nameof(options.MaxStreamsPerConnection));
        AtLeast(options.MaxRequestHeadersTotalSize, 1024, nameof(options.MaxRequestHeadersTotalSize));
        AtLeast(options.ReturnMemoryAfterConnections, 0, nameof(options.ReturnMemoryAfterConnections));
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);

        void Positive(TimeSpan value, string key)
        {
            if (value <= TimeSpan.Zero || value > TimeSpan.FromDays(1))
            {
                failures.Add($"{prefix}{key} must be positive and at most a day (e.g. 00:00:10), not {value}.");
            }
        }

        void AtLeast(int value, int minimum, string key)
        {
            if (value < minimum)
            {
                failures.Add($"{prefix}{key} must be at least {minimum}, not {value}.");
            }
        }
    }
}

/// <summary>Registration of the limits: options, Kestrel's server-wide limits, and the per-endpoint connection guard.</summary>
internal static class ServerLimitsExtensions
{
    /// <summary>
    /// Binds <c>&lt;serverSection&gt;:Limits</c> and applies it to Kestrel. Listening endpoints get the handshake timeout
    /// and the memory return through <see cref="UseConnectionGuard"/>, called where each endpoint is declared.
    /// </summary>
    public static IServiceCollection AddServerLimits(this IServiceCollection services, string serverSection)
    {
        services.AddOptions<ServerLimitsOptions>()
            .BindConfiguration($"{serverSection}:{ServerLimitsOptions.SubsectionName}")
            .ValidateOnStart();
        services.AddSingleton<IValidateOptions<ServerLimitsOptions>>(new ServerLimitsValidator(serverSection));
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<ConnectionGuard>();
        services.AddTransient<IStartupFilter, ConnectionGuard.FirstRequestFilter>();
        services.AddOptions<KestrelServerOptions>().Configure<IOptions<ServerLimitsOptions>>((kestrel, options) => Apply(kestrel.Limits, options.Value));
        return services;
    }

    /// <summary>
    /// Closes connections of this endpoint that send no request within the handshake timeout, and counts them for the
    /// memory return. First in the endpoint's connection pipeline, so a stalled TLS handshake counts too.
    /// </summary>
    public static ListenOptions UseConnectionGuard(this ListenOptions listen)
    {
        listen.Use(next =>
        {
            var guard = listen.ApplicationServices.GetRequiredService<ConnectionGuard>();
            return connection => guard.OnConnectionAsync(connection, next);
        });
        return listen;
    }

    private static void Apply(KestrelServerLimits limits, ServerLimitsOptions options)
    {
        limits.KeepAliveTimeout = options.KeepAliveTimeout;
        limits.RequestHeadersTimeout = options.RequestHeadersTimeout;
        limits.MaxConcurrentConnections = options.MaxConnections;
        limits.MaxConcurrentUpgradedConnections = options.MaxUpgradedConnections;
        limits.Http2.MaxStreamsPerConnection = options.MaxStreamsPerConnection;
        limits.MaxRequestHeadersTotalSize = options.MaxRequestHeadersTotalSize;
    }
}
