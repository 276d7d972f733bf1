using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Rbs.Orchestrator.State.Postgres;

internal static class PostgresStateStoreServiceCollectionExtensions
{
    /// <summary>
    /// Selects the PostgreSQL (or Spanner-through-PGAdapter) state store as the <see cref="IStateStore"/>,
    /// replacing any store registered before. Call <see cref="IStateStore.InitializeAsync"/> at start-up.
    /// </summary>
    public static IServiceCollection AddPostgresStateStore(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<PostgresStateStoreOptions>()
            .BindConfiguration(PostgresStateStoreOptions.SectionName)
            .PostConfigure(options =>
            {
                if (string.IsNullOrWhiteSpace(options.ConnectionString))
                {
                    options.ConnectionString = configuration.GetConnectionString("rbs") ?? "";
                }
            })
            .ValidateOnStart();
        services.TryAddEnumerable(
            ServiceDescriptor.Singleton<IValidateOptions<PostgresStateStoreOptions>, PostgresStateStoreOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<PostgresStateStore>();
        services.RemoveAll<IStateStore>();
        services.AddSingleton<IStateStore>(provider => provider.GetRequiredService<PostgresStateStore>());
        return services;
    }

    /// <summary>True when configuration names a PostgreSQL database for the state store.</summary>
    public static bool HasPostgresStateStore(this IConfiguration configuration) =>
        !string.IsNullOrWhiteSpace(configuration[$"{PostgresStateStoreOptions.SectionName}:ConnectionString"])
        || !string.IsNullOrWhiteSpace(configuration.GetConnectionString("rbs"));
}

internal sealed class PostgresStateStoreOptionsValidator : IValidateOptions<PostgresStateStoreOptions>
{
    public ValidateOptionsResult Validate(string? name, PostgresStateStoreOptions options)
    {
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.ConnectionString))
        {
            failures.Add(
                $"The PostgreSQL state store needs a connection string: set {PostgresStateStoreOptions.SectionName}:ConnectionString " +
                "(env Orchestrator__Postgres__ConnectionString) or ConnectionStrings:rbs (env ConnectionStrings__rbs).");
        }
        else
        {
            try
            {
                _ = new NpgsqlConnectionStringBuilder(options.ConnectionString);
            }
            catch (ArgumentException ex)
            {
                failures.Add($"{PostgresStateStoreOptions.SectionName}:ConnectionString is not a valid Npgsql connection string: {ex.Message}");
            }
        }

        if (options.CommandTimeout <= TimeSpan.Zero)
        {
            failures.Add($"{PostgresStateStoreOptions.SectionName}:CommandTimeout must be positive (default 00:00:10).");
        }

        if (options.ConnectTimeout <= TimeSpan.Zero)
        {
            failures.Add($"{PostgresStateStoreOptions.SectionName}:ConnectTimeout must be positive (default 00:00:05).");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
