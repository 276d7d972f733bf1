namespace Rbs.Agent.Outputs;

/// <summary>Registers outputs collection (StartCommand.collect_outputs) and the rbs.v1.Outputs service.</summary>
internal static class OutputsServiceCollectionExtensions
{
    public static IServiceCollection AddAgentOutputs(this IServiceCollection services)
    {
        services.AddSingleton<OutputStore>();
        services.AddSingleton<OutputCollector>();
        return services;
    }

    public static WebApplication MapAgentOutputs(this WebApplication app)
    {
        app.MapGrpcService<OutputsService>();
        return app;
    }
}
