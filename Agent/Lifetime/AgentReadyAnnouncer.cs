using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.Options;
using Rbs.Agent.Hosting;
using Rbs.Agent.Tunnel;
using Rbs.Shared.Hosting;

namespace Rbs.Agent.Lifetime;

/// <summary>
/// Tells the spawner the agent is ready by writing its <see cref="AgentReadyFile"/> (<see cref="ReadyFile.Write{T}"/>:
/// atomically, so a reader never sees a partial file). With a direct listener the file is written once Kestrel listens;
/// a tunnel-only agent (<c>--gateway</c> without <c>--listen</c>) is "ready" once its first tunnel to the gateway is open
/// (it is registered), and its address is <see cref="AgentReadyFile.TunnelOnlyAddress"/>.
/// </summary>
internal sealed partial class AgentReadyAnnouncer(
    IOptions<AgentOptions> options,
    IServer server,
    IHostApplicationLifetime lifetime,
    IServiceProvider services,
    ILogger<AgentReadyAnnouncer> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        // ApplicationStarted fires after the server has bound its addresses.
        lifetime.ApplicationStarted.Register(OnStarted);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>The first address the server bound, e.g. <c>http://127.0.0.1:41234</c>; null when it has none.</summary>
    internal static string? BoundAddress(IServer server) =>
        server.Features.Get<IServerAddressesFeature>()?.Addresses
            .FirstOrDefault(a => !a.Contains(TunnelEndPoint.HostPrefix, StringComparison.Ordinal));

    private void OnStarted()
    {
        // With a direct listener the agent is reachable as soon as it listens (direct mode must not depend on the
        // gateway); a tunnel-only agent is reachable once its first tunnel is up.
        var address = BoundAddress(server);
        if (address is null && services.GetService<AgentTunnelStatus>() is { } tunnel)
        {
            _ = WriteWhenTunnelConnectedAsync(tunnel);
            return;
        }

        WriteReadyFile(address);
    }

    private async Task WriteWhenTunnelConnectedAsync(AgentTunnelStatus tunnel)
    {
        // A rejected join token stops the agent (StopOnRejection): then there is nothing to announce.
        var first = await Task.WhenAny(tunnel.FirstConnected, tunnel.Rejected, Task.Delay(Timeout.Infinite, lifetime.ApplicationStopping));
        if (first == tunnel.FirstConnected)
        {
            WriteReadyFile(BoundAddress(server) ?? AgentReadyFile.TunnelOnlyAddress);
        }
    }

    private void WriteReadyFile(string? address)
    {
        Log.Listening(logger, options.Value.AgentId, address ?? "(no listener)", Environment.ProcessId);
        var path = options.Value.ReadyFile;
        if (string.IsNullOrEmpty(path) || address is null)
        {
            return;
        }

        try
        {
            ReadyFile.Write(path, new AgentReadyFile(options.Value.AgentId, Environment.ProcessId, address));
            Log.ReadyFileWritten(logger, path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Without the ready file the spawner would wait for nothing: fail loudly and exit.
            Log.ReadyFileFailed(logger, path, ex);
            Environment.ExitCode = 1;
            lifetime.StopApplication();
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "Agent {AgentId} listening on {Address} (pid {Pid})")]
        public static partial void Listening(ILogger logger, string agentId, string address, int pid);

        [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "Wrote ready file {Path}")]
        public static partial void ReadyFileWritten(ILogger logger, string path);

        [LoggerMessage(EventId = 3, Level = LogLevel.Critical, Message = "Could not write ready file {Path}; stopping")]
        public static partial void ReadyFileFailed(ILogger logger, string path, Exception exception);
    }
}
