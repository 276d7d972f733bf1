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
            .Validate(o => o.RelaySpareConnections is >= 0 and <= 64, "Agent:Tunnel:RelaySpareConnections must be 0..64 (0: no relay tunnels).")
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
internal sealed partial class TunnelConnectionListenerFactory(
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
        var logger = loggerFactory.CreateLogger<TunnelConnectionListener>();
        // Read once, here (after the options were validated): from now on the token lives in memory only.
        var credentials = JoinCredentials.Load(o, timeProvider, logger);
        // In-use plain relay tunnels are Kestrel socket connections: their transport logs under Kestrel's own category.
        var socketsLogger = loggerFactory.CreateLogger("Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets");
        var listener = new TunnelConnectionListener(tunnelEndPoint, o, credentials, status, timeProvider, logger, socketsLogger,
            onRejected: () =>
            {
                if (o.StopOnRejection)
                {
                    _ = StopWhenIdleAsync(logger);
                }
            });
        listener.Start();
        return ValueTask.FromResult<IConnectionListener>(listener);
    }

    /// <summary>
    /// Credentials finally refused: a running command must not die of it (its tunnel still carries it), so the agent
    /// stops only once no request is in flight. It takes no new tunnel meanwhile.
    /// </summary>
    private async Task StopWhenIdleAsync(ILogger logger)
    {
        var inFlight = status.ActiveRequests;
        if (inFlight > 0)
        {
            Log.StoppingWhenIdle(logger, inFlight);
        }

        try
        {
            await status.WhenIdleAsync(lifetime.ApplicationStopping);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        Log.StoppingRefused(logger, await status.Rejected);
        lifetime.StopApplication();
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 312, Level = LogLevel.Warning, Message = "Credentials refused while {Requests} request(s) are in flight: they keep running; the agent stops once they end")]
        public static partial void StoppingWhenIdle(ILogger logger, int requests);

        [LoggerMessage(EventId = 313, Level = LogLevel.Critical, Message = "Stopping the agent: {Reason}, and no request is in flight (Agent:Tunnel:StopOnRejection)")]
        public static partial void StoppingRefused(ILogger logger, string reason);
    }
}

/// <summary>
/// First middleware of the agent's pipeline in tunnel mode: counts the streams each tunnel carries (the
/// tunnel connection is in the connection's items), which lets the listener dial spares ahead of demand, and the
/// requests in flight on the whole agent.
/// </summary>
internal sealed class TunnelStreamCounter : IStartupFilter
{
    public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
    {
        var status = app.ApplicationServices.GetRequiredService<AgentTunnelStatus>();
        app.Use(async (context, nextMiddleware) =>
        {
            var tunnel = context.Features.Get<Microsoft.AspNetCore.Connections.Features.IConnectionItemsFeature>()?.Items
                .TryGetValue(TunnelConnection.ItemKey, out var item) == true ? item as TunnelConnection : null;
            tunnel?.StreamStarted();
            // Every request, tunnel or direct: an agent whose credentials were refused stops only once none is left.
            status.RequestStarted();
            try
            {
                await nextMiddleware(context);
            }
            finally
            {
                status.RequestEnded();
                tunnel?.StreamEnded();
            }
        });
        next(app);
    };
}
