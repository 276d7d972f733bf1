using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Kubernetes;

namespace Microsoft.Extensions.DependencyInjection;

internal static class KubernetesComputeServiceCollectionExtensions
{
    /// <summary>
    /// Registers <see cref="KubernetesComputeService"/> as the <see cref="IComputeService"/>, configured from
    /// <c>Orchestrator:Kubernetes</c>. Call it when <c>Orchestrator:Backend</c> is "kubernetes".
    /// The API client is created on first use, so a misconfigured cluster fails the first GetServer loudly
    /// instead of hiding behind a healthy-looking start.
    /// </summary>
    public static IServiceCollection AddKubernetesCompute(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<KubernetesComputeOptions>()
            .Bind(configuration.GetSection(KubernetesComputeOptions.SectionName))
            .ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<KubernetesComputeOptions>, KubernetesComputeOptionsValidator>());
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton(sp => KubernetesConnection.Create(sp.GetRequiredService<IOptions<KubernetesComputeOptions>>().Value));
        services.TryAddSingleton<KubernetesComputeService>();
        services.AddSingleton<IComputeService>(sp => sp.GetRequiredService<KubernetesComputeService>());
        // The orchestrator resolves its backend by name (Orchestrator:Backend).
        services.AddKeyedSingleton<IComputeService>(
            KubernetesComputeService.BackendName, (sp, _) => sp.GetRequiredService<KubernetesComputeService>());
        return services;
    }
}
