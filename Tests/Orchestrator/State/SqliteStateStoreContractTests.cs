using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>The store contract against the embedded SQLite store, on a fresh database file per test.</summary>
public sealed class SqliteStateStoreContractTests(ITestOutputHelper output) : StateStoreContractTests(output), IDisposable
{
    private readonly DirectoryInfo _directory = Directory.CreateTempSubdirectory("rbs-sqlite-contract-");

    private protected override async Task<IStateStore> CreateStoreAsync(TimeProvider timeProvider)
    {
        // Every instance opens the same file: two instances stand for two orchestrator processes.
        var store = new SqliteStateStore(
            Options.Create(new OrchestratorOptions { StatePath = Path.Combine(_directory.FullName, "orchestrator.db") }),
            timeProvider);
        await store.InitializeAsync(CancellationToken.None);
        return store;
    }

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        _directory.Delete(recursive: true);
    }
}
