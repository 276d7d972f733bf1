using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.State;
using Rbs.Shared.Hosting;

namespace Rbs.Orchestrator.Hosting;

/// <summary>
/// Once Kestrel is bound: logs the address, prints the one stdout line scripts wait for, and writes the
/// <see cref="OrchestratorReadyFile"/> when configured (<see cref="ReadyFile.Write{T}"/>: atomically). The ready file is
/// removed on shutdown so a stale one never points at a dead orchestrator.
/// </summary>
internal sealed partial class ListeningAnnouncer(
    IServer server,
    IHostApplicationLifetime lifetime,
    IOptions<OrchestratorOptions> options,
    IStateStore stateStore,
    ILogger<ListeningAnnouncer> logger) : IHostedService
{
    private string? _writtenReadyFile;

    /// <summary>The bound address, e.g. "http://127.0.0.1:50051"; set once the server started.</summary>
    public string? Address { get; private set; }

    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStarted.Register(Announce);
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        if (_writtenReadyFile is not null)
        {
            File.Delete(_writtenReadyFile);
        }

        return Task.CompletedTask;
    }

    private void Announce()
    {
        var address = server.Features.Get<IServerAddressesFeature>()?.Addresses.FirstOrDefault() ?? "(unknown)";
        // Kestrel reports "http://0.0.0.0:PORT" style addresses as bound; those are what clients need minus
        // the wildcard, which only the user can resolve, so it is printed as is.
        Address = address;
        var value = options.Value;
        var mode = value.LocalMode ? "local mode" : $"{value.GetBackend()} backend";
        Console.Out.WriteLine($"rbs-orchestrator listening on {address} ({mode}, state {stateStore.Description})");
        Console.Out.Flush();
        Log.Listening(logger, address, mode, stateStore.Description);

        if (!string.IsNullOrWhiteSpace(value.ReadyFile))
        {
            var path = Path.GetFullPath(value.ReadyFile);
            ReadyFile.Write(path, new OrchestratorReadyFile(address, Environment.ProcessId));
            _writtenReadyFile = path;
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "rbs-orchestrator listening on {Address} ({Mode}, state {State})")]
        public static partial void Listening(ILogger logger, string address, string mode, string state);
    }
}
