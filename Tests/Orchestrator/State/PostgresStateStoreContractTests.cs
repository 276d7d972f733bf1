using Microsoft.Extensions.Options;
using Rbs.Orchestrator.State;
using Rbs.Orchestrator.State.Postgres;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>The store contract against a real PostgreSQL server, on a fresh database for this class.</summary>
public sealed class PostgresStateStoreContractTests(PostgresServerFixture postgres, ITestOutputHelper output)
    : StateStoreContractTests(output), IClassFixture<PostgresServerFixture>
{
    private protected override async Task<IStateStore> CreateStoreAsync(TimeProvider timeProvider)
    {
        var store = new PostgresStateStore(
            Options.Create(new PostgresStateStoreOptions { ConnectionString = postgres.ConnectionString }),
            timeProvider,
            new TestOutputLogger<PostgresStateStore>(Output));
        await store.InitializeAsync(CancellationToken.None);
        return store;
    }
}
