using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Rbs.Agent.Tunnel;

/// <summary>
/// Wiring for tunnel mode. In the agent's Program: <c>if (builder.Configuration.IsAgentTunnelEnabled())
/// builder.WebHost.UseAgentTunnel(); else listen on TCP as usual</c>.
/// </summary>
internal static class AgentTunnelExtensions
{
    /// <summary>True when <c>Agent:Tunnel:GatewayAddress</c> (flag <c>--gateway</c>) is set.</summary>
    public static bool IsAgentTunnelEnabled(this IConfiguration configuration) =>
        !string.IsNullOrWhiteSpace(configuration[$"{AgentTunnelOptions.SectionName}:{nameof(AgentTunnelOptions.GatewayAddress)}"]);

    /// <summary>Kestrel serves HTTP/2 over outbound tunnels to the gateway (and on nothing else unless the caller adds endpoints).</summary>
    public static IWebHostBuilder UseAgentTunnel(this IWebHostBuilder webHost) =>
        webHost.ConfigureServices(services => services.AddAgentTunnel());

    public static IServiceCollection AddAgentTunnel(this IServiceCollection services)
    {
        services.AddOptions<AgentTunnelOptions>()
            .BindConfiguration(AgentTunnelOptions.SectionName)
            .Validate(o => !string.IsNullOrWhiteSpace(o.GatewayAddress), "Agent:Tunnel:GatewayAddress (--gateway) is required in tunnel mode.")
            .Validate(o => !string.IsNullOrWhiteSpace(o.JoinToken) || !string.IsNullOrWhiteSpace(o.JoinTokenFile),
                "Tunnel mode needs a join token: --join-token-file (preferred) or --join-token.")
            .Validate(o => o.JoinTokenFile is not { Length: > 0 } f || File.Exists(f), "Agent:Tunnel:JoinTokenFile does not exist.")
            .Validate(o => o.SpareConnections is >= 1 and <= 64, "Agent:Tunnel:SpareConnections must be 1..64.")
            .Validate(o => o.MaxStreamsPerTunnel is >= 1 and <= 100_000, "Agent:Tunnel:MaxStreamsPerTunnel must be 1..100000.")
            .Validate(o => o.MaxExtraSpares is >= 0 and <= 64, "Agent:Tunnel:MaxExtraSpares must be 0..64.")
            .Validate(o => o.ReconnectInitialDelay > TimeSpan.Zero && o.ReconnectMaxDelay >= o.ReconnectInitialDelay
                && o.KeepAliveInterval > TimeSpan.Zero && o.KeepAliveTimeout > TimeSpan.Zero && o.ConnectTimeout > TimeSpan.Zero,
                "Agent:Tunnel delays and timeouts must be positive, with ReconnectMaxDelay >= ReconnectInitialDelay.")
            .Validate(o =>
            {
                try
                {
                    o.ConnectUri();
                    return true;
                }
                catch (FormatException)
                {
                    return false;
                }
            }, "Agent:Tunnel:GatewayAddress must be an http(s):// or ws(s):// address.")
            .ValidateOnStart();

        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<AgentTunnelStatus>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IConnectionListenerFactory, TunnelConnectionListenerFactory>());
        services.AddOptions<KestrelServerOptions>().Configure<IOptions<AgentTunnelOptions>>((kestrel, options) =>
        {
            // (A server-wide limit: in tunnel mode the tunnel is normally the agent's only endpoint.)
            kestrel.Limits.Http2.MaxStreamsPerConnection = options.Value.MaxStreamsPerTunnel;
            kestrel.Listen(new TunnelEndPoint(options.Value.ConnectUri()), listen => listen.Protocols = HttpProtocols.Http2);
        });
        // Counts streams per tunnel so the listener can dial extra spares before a tunnel is full.
        services.AddTransient<IStartupFilter, TunnelStreamCounter>();
        return services;
    }
}

/// <summary>Binds <see cref="TunnelEndPoint"/>s; Kestrel keeps using sockets for every other endpoint.</summary>
internal sealed class TunnelConnectionListenerFactory(
    IOptions<AgentTunnelOptions> options,
    AgentTunnelStatus status,
    TimeProvider timeProvider,
    IHostApplicationLifetime lifetime,
    ILoggerFactory loggerFactory) : IConnectionListenerFactory, IConnectionListenerFactorySelector
{
    public bool CanBind(System.Net.EndPoint endpoint) => endpoint is TunnelEndPoint;

    public ValueTask<IConnectionListener> BindAsync(System.Net.EndPoint endpoint, CancellationToken cancellationToken = default)
    {
        var tunnelEndPoint = endpoint as TunnelEndPoint
            ?? throw new NotSupportedException($"{endpoint.GetType().Name} is not a tunnel endpoint.");
        var o = options.Value;
        var listener = new TunnelConnectionListener(tunnelEndPoint, o, status, timeProvider,
            loggerFactory.CreateLogger<TunnelConnectionListener>(),
            onRejected: () =>
            {
                if (o.StopOnRejection)
                {
                    lifetime.StopApplication();
                }
            });
        listener.Start();
        return ValueTask.FromResult<IConnectionListener>(listener);
    }
}

/// <summary>
/// First middleware of the agent's pipeline in tunnel mode: counts the streams each tunnel carries (the
/// tunnel connection is in the connection's items), which lets the listener dial spares ahead of demand.
/// </summary>
internal sealed class TunnelStreamCounter : IStartupFilter
{
    public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
    {
        app.Use(async (context, nextMiddleware) =>
        {
            var tunnel = context.Features.Get<Microsoft.AspNetCore.Connections.Features.IConnectionItemsFeature>()?.Items
                .TryGetValue(TunnelConnection.ItemKey, out var item) == true ? item as TunnelConnection : null;
            tunnel?.StreamStarted();
            try
            {
                await nextMiddleware(context);
            }
            finally
            {
                tunnel?.StreamEnded();
            }
        });
        next(app);
    };
}
